"""Local sinks for the failure alerts that `airflow_settings.yaml` configures: mail and a JSON webhook.

    make alert-sinks        # or: .venv/bin/python scripts/alert_sinks.py [--smtp-port 8025] [--webhook-port 8088]

Prints every alert it receives (the e-mail's subject and body, the webhook's title and message) until
interrupted. Both listen on 127.0.0.1 only. Without them running, an alert is not sent and the task
log says so in one line.
"""

from __future__ import annotations

import argparse
import email
import json
import signal
import threading
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Mail:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's handler protocol
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        body = message.get_body(preferencelist=("plain", "html"))
        print(f"\n--- e-mail to {', '.join(envelope.rcpt_tos)}: {message['subject']}\n"
              f"{body.get_content() if body else ''}", flush=True)
        return "250 OK"


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's handler protocol
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            payload = json.loads(raw)
            text = f"{payload.get('title', '')}\n{payload.get('message', '')}"
        except ValueError:
            text = raw.decode(errors="replace")
        print(f"\n--- webhook {self.path}:\n{text}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--webhook-port", type=int, default=8088)
    args = parser.parse_args()
    from aiosmtpd.controller import Controller

    smtp = Controller(_Mail(), hostname="127.0.0.1", port=args.smtp_port)
    smtp.start()
    webhook = ThreadingHTTPServer(("127.0.0.1", args.webhook_port), _Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    print(f"alert sinks: SMTP on 127.0.0.1:{args.smtp_port}, webhook on http://127.0.0.1:{args.webhook_port}/alerts "
          "(Ctrl-C stops them)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    webhook.shutdown()
    smtp.stop()


if __name__ == "__main__":
    main()
