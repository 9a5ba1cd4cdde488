"""`modelmill webhooks add|list|delete`: the caller's project's webhook endpoints, over the API
(/v1/webhook_endpoints, a ModelMill extension) with the official SDK's generic request methods, so
the API key decides the project as it does for files and jobs."""

from __future__ import annotations

import json
import sys
import time


def add_commands(sub, remote) -> None:
    """Add `webhooks` to the top-level subparsers; `remote` adds --base-url/--api-key."""
    hooks = sub.add_parser("webhooks", help="webhook endpoints (events when jobs, eval runs and batches end)"
                           ).add_subparsers(dest="webhooks_cmd", required=True, metavar="ACTION")
    sp = remote(hooks.add_parser("add", help="register an endpoint and print its signing secret once",
                                 description="Register URL to receive this project's events, signed as OpenAI "
                                             "signs them (Standard Webhooks). See docs/operations.md."))
    sp.add_argument("url", help="http(s) URL the events are POSTed to")
    sp.add_argument("--events", nargs="+", metavar="TYPE",
                    help="event types to send (e.g. fine_tuning.job.succeeded eval.run.failed); default: all")
    sp.set_defaults(func=cmd_add)
    sp = remote(hooks.add_parser("list", help="list endpoints with their newest delivery's status"))
    sp.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    sp.set_defaults(func=cmd_list)
    sp = remote(hooks.add_parser("delete", help="delete an endpoint (its pending deliveries are dropped)"))
    sp.add_argument("endpoint_id", help="endpoint id (whep_...)")
    sp.set_defaults(func=cmd_delete)


def _client(args):
    from openai import OpenAI

    return OpenAI(base_url=args.base_url, api_key=args.api_key or "local")


def _call(what: str, fn):
    """fn()'s result; an API error is printed as the server's message (exit status 1), not a traceback."""
    import openai

    try:
        return fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        print(f"modelmill webhooks {what}: {body.get('message') or e.message}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_add(args) -> int:
    body = {"url": args.url, **({"events": args.events} if args.events else {})}
    client = _client(args)
    endpoint = _call("add", lambda: client.post("/webhook_endpoints", body=body, cast_to=object))
    print(endpoint["secret"])
    print(f"Endpoint {endpoint['id']} -> {endpoint['url']} ({', '.join(endpoint['events'] or ['every event'])}).\n"
          "The line above is its signing secret: store it now, it is not shown again. Verify deliveries with "
          "client.webhooks.unwrap(body, headers, secret=...).", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    client = _client(args)
    endpoints = _call("list", lambda: client.get("/webhook_endpoints", cast_to=object))["data"]
    for e in endpoints:
        newest = _call("list", lambda: client.get(f"/webhook_endpoints/{e['id']}/deliveries",
                                                  options={"params": {"limit": 1}}, cast_to=object))["data"]
        e["last_delivery"] = newest[0] if newest else None
    if args.json:
        print(json.dumps(endpoints, indent=2))
        return 0
    if not endpoints:
        print("No webhook endpoints: add one with `modelmill webhooks add URL`.", file=sys.stderr)
    for e in endpoints:
        d = e["last_delivery"]
        last = "no deliveries yet" if d is None else (
            f"last: {d['event_type']} {d['status']}"
            + (f" ({d['last_status_code'] or d['last_error']})" if d["status"] != "delivered" and d["attempts"] else "")
            + f" {time.strftime('%Y-%m-%d %H:%M', time.localtime(d['created_at']))}")
        print(f"{e['id']}  {e['url']}  [{', '.join(e['events'] or ['all events'])}]  {last}")
    return 0


def cmd_delete(args) -> int:
    client = _client(args)
    _call("delete", lambda: client.delete(f"/webhook_endpoints/{args.endpoint_id}", cast_to=object))
    print(f"Deleted {args.endpoint_id}.", file=sys.stderr)
    return 0
