"""A faithful fake of QuickBooks Online (Intuit's Accounting API v3 and OAuth 2.0 token endpoint).

A real HTTP server process (``python -m tests.support.fake_qbo``), so a connector's HTTP, timeouts,
auth, retries and throttling are the code under test (STYLE.md 15). It follows the shapes Intuit
documents, or, where Intuit's documentation is silent, shapes seen in real responses quoted in
public bug reports; where neither settles a point it is made STRICTER than Intuit, and the
assumption is written in the docstring of the module that makes it. Modules:

- ``timefmt``  time stamps: the company's fixed -08:00 offset, parsing of what clients send
- ``faults``   every error body (Fault shapes, the gateway's lowercase 401/403 shape, OAuth errors)
- ``oauth``    the token endpoint's state: single-use rotating refresh tokens, expiring access
               tokens
- ``limits``   500 requests per rolling minute and 10 concurrent per realm, and the counters
- ``query``    the query-language subset (a parser that answers Intuit's 4000/4001 Faults)
- ``store``    entities, SyncTokens, MetaData, deletions (tombstones for CDC)
- ``seed``     deterministic construction-company data (vendors, projects, bills, payments...)
- ``realm``    one company: store, tokens, limits, switches, counters and its own clock
- ``reads``    the query endpoint's and CDC's answers (paging, empty pages, truncation)
- ``admin``    the ``/_admin/`` API (not Intuit's) that tests, the benchmark and the demo drive
- ``server``   the HTTP routing; ``__main__`` the process; ``client`` the typed helper for tests
"""
