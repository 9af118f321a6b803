"""A receiver of auth0-exporter webhooks that verifies every delivery with the Standard Webhooks
library (pip install standardwebhooks), using only the standard library besides.

    EXPORTER_WEBHOOK_SECRET=whsec_... PORT=8000 python3 webhook_receiver.py

Each verified event is printed as one JSON line; a delivery whose signature or timestamp does not
verify is answered 400 (the exporter retries it, so a misconfigured secret shows in its
delivery log rather than losing events). Deliveries are at least once: deduplicate on webhook-id.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

hook = Webhook(os.environ["EXPORTER_WEBHOOK_SECRET"])
seen = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            event = hook.verify(body, dict(self.headers))
        except WebhookVerificationError as e:
            print(json.dumps({"rejected": str(e)}), flush=True)
            self.send_response(400)
            self.end_headers()
            return
        event_id = self.headers["webhook-id"]
        if event_id not in seen:  # a retry of an event already handled is acknowledged again
            seen.add(event_id)
            data = event["data"]
            print(json.dumps({"id": event_id, "type": event["type"], "export_id": data.get("export_id"),
                              "schedule_id": data.get("schedule_id"), "links": data.get("links")}), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass  # one line per event above is the log


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Receiver)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    sys.exit(server.serve_forever())
