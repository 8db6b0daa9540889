#!/usr/bin/env python3
"""HTTP from inside a test's namespace (no curl on a minimal machine).

  prom.py get URL [ACCEPT]   -> the body (exit 1 on an HTTP error)
  prom.py query BASE PROMQL  -> the JSON of BASE/api/v1/query?query=PROMQL
"""
import sys
import urllib.parse
import urllib.request


def get(url, accept=None):
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def main():
    if sys.argv[1] == "get":
        sys.stdout.write(get(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
    elif sys.argv[1] == "query":
        q = urllib.parse.quote(sys.argv[3])
        sys.stdout.write(get(f"{sys.argv[2]}/api/v1/query?query={q}"))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
