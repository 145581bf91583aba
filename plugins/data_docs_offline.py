"""Great Expectations' Data Docs without the internet: CDN addresses pointed at local copies.

A Data Docs page loads Bootstrap, jQuery, Font Awesome, Vega and their plugins from public CDNs,
and its logos from an S3 bucket; offline, it renders without styles, tables or charts. ``rewrite``
points each such address at the copy in ``plugins/data_docs_assets/`` (served by the reports route)
and each logo at the one Data Docs keep in their own ``static/images`` (or, for the dark-mode logo
they do not keep, at the copy shipped with the assets). Standard library only.
"""

import re

#: CDN address (a regular expression on the whole URL) -> the file under data_docs_assets/.
CDN = (
    (r"https://code\.jquery\.com/jquery-3\.7\.1\.min\.js", "jquery/dist/jquery.min.js"),
    (
        r"https://maxcdn\.bootstrapcdn\.com/bootstrap/4\.3\.1/css/bootstrap\.min\.css",
        "bootstrap/dist/css/bootstrap.min.css",
    ),
    (
        r"https://stackpath\.bootstrapcdn\.com/bootstrap/4\.3\.1/js/bootstrap\.min\.js",
        "bootstrap/dist/js/bootstrap.min.js",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/popper\.js/1\.12\.9/umd/popper\.min\.js",
        "popper.js/dist/umd/popper.min.js",
    ),
    (
        r"https://unpkg\.com/bootstrap-table@1\.19\.[01]/dist/(?P<path>[\w./-]+)",
        "bootstrap-table/dist/{path}",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/bootstrap-datepicker/1\.9\.0/(?P<path>(?:js|css)/[\w.-]+)",
        "bootstrap-datepicker/dist/{path}",
    ),
    (
        r"https://cdnjs\.cloudflare\.com/ajax/libs/font-awesome/6\.6\.0/css/all\.min\.css",
        "@fortawesome/fontawesome-free/css/all.min.css",
    ),
    (
        r"https://cdn\.jsdelivr\.net/npm/@forevolve/bootstrap-dark@1\.1\.0/dist/css/bootstrap-prefers-dark\.css",
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
    ),
    (r"https://cdn\.jsdelivr\.net/npm/vega@5", "vega/build/vega.min.js"),
    (r"https://cdn\.jsdelivr\.net/npm/vega-lite@5", "vega-lite/build/vega-lite.min.js"),
    (r"https://cdn\.jsdelivr\.net/npm/vega-embed@6", "vega-embed/build/vega-embed.min.js"),
)
_ATTRIBUTE = re.compile(r"""(?P<attr>\b(?:src|href)=)(?P<q>["'])(?P<url>https?://[^"']+)(?P=q)""")
_LOGO = re.compile(
    r"https://great-expectations-web-assets\.s3\.[\w-]+\.amazonaws\.com/(?P<name>[\w.-]+\.png)(?:\?[^\"']*)?"
)
#: Logos the pages name that Data Docs do not keep in ``static/images``: shipped in data_docs_assets/
#: (the dark-mode navbar logo: Data Docs' own logo-long.png with its lettering made light).
SHIPPED_LOGOS = {"full_logo_dark.png": "great_expectations/full_logo_dark.png"}
#: The page's link to the Data Docs home (``../../index.html``) says how deep below the site root it is.
_HOME = re.compile(r"""href=["'](?P<up>(?:\.\./)*)index\.html["']""")


def local_path(url: str) -> str | None:
    """The asset file for a CDN ``url``, or None when it is not one of Data Docs' assets."""
    for pattern, target in CDN:
        match = re.fullmatch(pattern, url)
        if match:
            return target.format(**match.groupdict())
    return None


def rewrite(page: str, assets_url: str) -> str:
    """``page`` with each known CDN ``src``/``href`` pointed at ``assets_url``/<file>; logos made local."""
    up = _HOME.search(page)
    static = f"{up['up'] if up else ''}static/images/"

    def attribute(match: re.Match) -> str:
        url = match["url"]
        target = local_path(url)
        if target:
            return f"{match['attr']}{match['q']}{assets_url}/{target}{match['q']}"
        logo = _LOGO.fullmatch(url)
        if logo:
            return f"{match['attr']}{match['q']}{logo_path(logo['name'])}{match['q']}"
        return match.group(0)

    def logo_path(name: str) -> str:
        return f"{assets_url}/{SHIPPED_LOGOS[name]}" if name in SHIPPED_LOGOS else f"{static}{name}"

    page = _ATTRIBUTE.sub(attribute, page)
    return _LOGO.sub(lambda m: logo_path(m["name"]), page)  # logos in inline styles and scripts
