"""ERP throttling shared by the whole fleet: a per-company token bucket (``ratelimit``) and a
cap on concurrent requests (``inflight``), each one Lua script on Redis."""
