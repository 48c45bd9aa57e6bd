-- Save one run record; a new run id joins the company's history, the oldest beyond the cap go.
-- KEYS[1]  the company's run records (HASH run id -> RunRecord JSON)
-- KEYS[2]  the company's history (LIST of run ids, newest first)
-- ARGV[1]  the run id (its task id)
-- ARGV[2]  the record (JSON)
-- ARGV[3]  the history cap
-- Returns 1 when the run is new, 0 when an existing record was rewritten.
--#include _save_run
return save(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
