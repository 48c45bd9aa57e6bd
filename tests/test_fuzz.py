"""Bad input, fuzzed (issue 6, item 7): hypothesis over the management command's arguments, over
corrupted stored records and over malformed change messages.

Properties: the command exits 0, or exits non-zero with exactly one ``error: `` line on stderr, no
traceback, and Redis byte-for-byte unchanged under the prefix (a refused ``settings set`` may only
add one entry to the company's security log). Beat skips a company whose stored record is
corrupt, logs it once, and keeps serving every other company; malformed change messages never stop
it. Figures (inputs tried, crashes, writes on rejected input) are printed at the end of the module
and recorded as junit properties; the tests assert crashes == 0 and writes == 0.

Derandomized with a bounded number of examples, so CI runs the same inputs every time. The two
command-line fuzzers (hundreds of examples each) are marked ``slow``: a quick run skips them.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import fakeredis
import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from config.keys import KeySpace
from config.models import Company, StoredSettings
from erp_sync.beat.engine import BeatEngine, EngineConfig
from erp_sync.cli import cli
from erp_sync.cli.context import Ctx
from erp_sync.control.store import SettingsStore
from erp_sync.infra.redis_client import DECODING, connect
from erp_sync.schedule.applied import applied_version
from tests.support.clock import Clock
from tests.support.erp import ListPublisher
from tests.support.reads import xentries, zmembers
from tests.support.redisproc import RedisServer
from tests.support.snapshot import snapshot

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
CLI_FUZZ = settings(FUZZ, max_examples=500)
BEAT_FUZZ = settings(FUZZ, max_examples=30)
H = 3600.0
T0 = 1_800_000_000.0
RecordProperty = Callable[[str, object], None]  # pytest's record_property fixture

# --- figures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def figures(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    yield counts
    line = (
        f"fuzz figures: inputs tried {counts['inputs']} (cli args {counts['cli']}, "
        f"corrupt-record cli runs {counts['corrupt_runs']} over {counts['corrupt']} "
        f"corruptions, beat corruptions {counts['beat_corrupt']}, change messages "
        f"{counts['messages']}); rejected {counts['rejected']}, crashes {counts['crashes']}, "
        f"writes on rejected input {counts['writes']}"
    )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():  # shown without -s
            reporter.write_line("")
            reporter.write_line(line)


def _report(figures: Counter[str], record: RecordProperty, kind: str) -> None:
    for name in ("inputs", kind, "rejected", "crashes", "writes"):
        record(f"{kind}.{name}" if name != kind else name, figures[name])
    assert figures["crashes"] == 0
    assert figures["writes"] == 0


# --- the management command over fakeredis ---------------------------------------------------


def _world() -> tuple[redis.Redis, redis.Redis]:
    """A fresh seeded fakeredis: decoding client (as ``connect`` builds it) and a raw one."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, **DECODING)
    return client, fakeredis.FakeRedis(server=server)


def _seed(client: redis.Redis, keys: KeySpace) -> None:
    store = SettingsStore(client, keys)
    store.add_company("acme", "xero", timezone="Europe/London")
    store.add_company("stone", "sage_100")
    store.add_company("cm", "cmic")
    store.add_project("acme", "p1")
    for company in ("acme", "stone", "cm"):
        store.grant(company, "alice", "admin")
    store.grant("acme", "rita", "read_only")
    store.grant("acme", "sam", "standard")


BAD_IDS = [
    "a:b",
    "a b",
    "",
    " ",
    "ünïcödé",
    "日本",
    "x" * 5000,
    "-lead",
    "a\tb",
    "a\nb",
    "a\x00b",
    "*",
    "acme ",
    "ACME",
    "../acme",
    "{acme}",
    "😀",
]
junk = st.text(max_size=40) | st.sampled_from(BAD_IDS) | st.just("y" * 100_000)
company_ids = st.sampled_from(["acme", "stone", "cm", "nope"]) | junk
users = st.sampled_from(["alice", "rita", "sam", "zed"]) | junk
erps = st.sampled_from(["xero", "sage_100", "cmic", "oracle", "XERO", ""]) | junk
timezones = (
    st.sampled_from(
        [
            "UTC",
            "America/Chicago",
            "America",
            "Mars/Olympus",
            "../etc",
            "",
            "é" * 300,
            "a" * 5000,
            "Europe/London/",
        ]
    )
    | junk
)
frequencies = (
    st.sampled_from(
        ["hourly", "every_2_hours", "every_4_hours", "daily", "never", "weekly", "HOURLY", ""]
    )
    | junk
)
levels = st.sampled_from(["none", "read_only", "standard", "admin", "owner", ""]) | junk
kinds = st.sampled_from(["vendors", "jobs", "job_costs", "payments", "invoices"]) | junk
limits = st.sampled_from(["1", "50", "0", "-1", "10001", "abc", "9" * 40, ""])
TOGGLES = ["sync-job-costs", "refresh-companies", "refresh-jobs", "sync-payments"]


def _opt(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), st.just([name]), values.map(lambda v: [name, v]))


@st.composite
def _command(draw: st.DrawFn) -> list[str]:
    which = draw(
        st.sampled_from(
            [
                "settings set",
                "company add",
                "project add",
                "user grant",
                "sync-now",
                "history",
                "garbage",
            ]
        )
    )
    head = which.split()
    if which == "garbage":
        return draw(
            st.lists(junk | st.sampled_from(["--json", "--as", "-h", "settings"]), max_size=6)
        )
    positional = [draw(company_ids)]
    opts: list[list[str]] = []
    if which == "settings set":
        opts += [_draw_flag(draw, t) for t in TOGGLES]
        opts += [
            draw(_opt("--as", users)),
            draw(_opt("--payments-frequency", frequencies)),
            draw(st.sampled_from([[], ["--wait"], ["--no-wait"]])),
            draw(st.sampled_from([[], ["--json"]])),
        ]
    elif which == "company add":
        opts += [
            draw(_opt("--erp", erps)),
            draw(_opt("--name", junk)),
            draw(_opt("--timezone", timezones)),
        ]
    elif which == "project add":
        positional.append(draw(st.sampled_from(["p1", "p2"]) | junk))
        opts.append(draw(_opt("--name", junk)))
    elif which == "user grant":
        positional.append(draw(users))
        opts.append(draw(_opt("--level", levels)))
    elif which == "sync-now":
        positional.append(draw(kinds))
        opts += [draw(_opt("--as", users)), draw(_opt("--project", st.just("p1") | junk))]
    else:
        opts += [draw(_opt("--limit", limits)), draw(st.sampled_from([[], ["--json"]]))]
    # Options before, between or after the positional arguments, in any order.
    pieces = [[p] for p in positional] + [o for o in opts if o]
    pieces = draw(st.permutations(pieces))
    if draw(st.booleans()):  # keep positionals in order (the common case)
        pieces = [[p] for p in positional] + [o for o in opts if o]
        pieces = [pieces[0], *draw(st.permutations(pieces[1:]))] if pieces else pieces
    return head + [a for piece in pieces for a in piece]


def _draw_flag(draw: st.DrawFn, toggle: str) -> list[str]:
    return draw(st.sampled_from([[], [f"--{toggle}"], [f"--no-{toggle}"]]))


@pytest.fixture
def cli_env(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    env.setenv("ERP_SYNC_SETTINGS_WAIT_SECONDS", "0")  # no beat here: do not wait for one
    return env


def _invoke(client: redis.Redis, args: list[str]) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(cli, args, obj=Ctx(_client=client, _publisher=ListPublisher()))
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    return result.exit_code, result.stdout, result.stderr, crash


def _check(
    figures: Counter[str],
    client: redis.Redis,
    keys: KeySpace,
    args: list[str],
    before: dict[str, Any],
) -> None:
    """Count the input; assert the one-line-error and wrote-nothing properties."""
    figures["inputs"] += 1
    code, out, err, crash = _invoke(client, args)
    if crash is not None or "Traceback" in out + err:
        figures["crashes"] += 1
        raise AssertionError(f"crash on {args!r}: {crash!r}\n{err}")
    if code == 0:
        return
    figures["rejected"] += 1
    assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
    after = snapshot(client, keys.prefix)
    grew = {k for k in after.keys() | before.keys() if after.get(k) != before.get(k)}
    # A `settings set` refused for lack of admin is recorded on the security log, and only there.
    audited = {
        k
        for k in grew
        if k.startswith(f"{keys.prefix}:denied:")
        and len(after.get(k, [])) == len(before.get(k, [])) + 1
    }
    if grew - audited or (audited and "is required" not in err):
        figures["writes"] += 1
        raise AssertionError(f"rejected {args!r} wrote {sorted(grew)}")


@pytest.mark.slow
def test_fuzzed_command_arguments_get_a_clean_error_and_write_nothing(
    cli_env: pytest.MonkeyPatch,
    keys: KeySpace,
    figures: Counter[str],
    record_property: RecordProperty,
) -> None:
    @CLI_FUZZ
    @given(args=_command())
    def one(args: list[str]) -> None:
        client, _raw = _world()
        _seed(client, keys)
        figures["cli"] += 1
        _check(figures, client, keys, args, snapshot(client, keys.prefix))

    one()
    _report(figures, record_property, "cli")


# --- corrupted stored records ------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _corrupt_value(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """Random bytes, any JSON, or the valid record with one field dropped, retyped or added."""
    how = draw(st.sampled_from(["bytes", "json", "drop", "retype", "extra", "deep", "huge"]))
    if how == "bytes":
        return draw(st.binary(max_size=64))
    if how == "json":
        return json.dumps(draw(json_values)).encode()
    if how == "deep":
        return b"[" * 100_000 + b"]" * 100_000
    if how == "huge":
        return json.dumps({**valid, "version": 10**400, "name": "n" * 1_000_000}).encode()
    record = dict(valid)
    field = draw(st.sampled_from(sorted(record)))
    if how == "drop":
        record.pop(field)
    elif how == "retype":
        record[field] = draw(json_values)
    else:
        record[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return json.dumps(record).encode()


@st.composite
def _corruption(draw: st.DrawFn, keys: KeySpace, client: redis.Redis) -> tuple[str, Any]:
    """(what, how): which record of company ``acme`` is corrupted, and the raw content."""
    target = draw(st.sampled_from(["settings", "company", "project", "run", "wrongtype"]))
    if target == "settings":
        valid = json.loads(str(client.get(keys.settings("acme"))))
        return target, draw(_corrupt_value(valid))
    if target == "company":
        valid = json.loads(str(client.get(keys.company("acme"))))
        return target, draw(_corrupt_value(valid))
    if target == "project":
        valid = json.loads(str(client.hget(keys.projects("acme"), "p1")))
        return target, (draw(st.binary(min_size=1, max_size=16)), draw(_corrupt_value(valid)))
    if target == "run":
        return target, draw(_corrupt_value({"kind": "vendors", "company": "acme"}))
    return target, draw(st.sampled_from(["settings", "company", "projects"]))


def _apply_corruption(raw: redis.Redis, keys: KeySpace, target: str, value: Any) -> None:
    if target == "settings":
        raw.set(keys.settings("acme"), value)
    elif target == "company":
        raw.set(keys.company("acme"), value)
    elif target == "project":
        field, record = value
        raw.hset(keys.projects("acme"), mapping={"p1": record, field: record})
    elif target == "run":
        raw.lpush(keys.history("acme"), "r1")
        raw.hset(keys.runs("acme"), "r1", value)
    else:
        key = {"settings": keys.settings, "company": keys.company, "projects": keys.projects}[
            value
        ]("acme")
        raw.delete(key)
        raw.rpush(key, "a", "b")


READERS = [
    ["settings", "show", "acme"],
    ["settings", "show", "acme", "--json"],
    ["schedule", "acme"],
    ["schedule", "acme", "--json"],
    ["history", "acme"],
    ["history", "acme", "--json"],
    ["project", "list", "acme"],
    ["audit", "acme"],
    ["company", "list"],
    ["settings", "set", "acme", "--as", "alice", "--no-refresh-jobs"],
    ["sync-now", "acme", "job_costs", "--as", "alice"],
]


@pytest.mark.slow
def test_corrupt_stored_records_give_one_line_errors_never_tracebacks(
    cli_env: pytest.MonkeyPatch,
    keys: KeySpace,
    figures: Counter[str],
    record_property: RecordProperty,
) -> None:
    @FUZZ
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        client, raw = _world()
        _seed(client, keys)
        target, value = data.draw(_corruption(keys, client))
        _apply_corruption(raw, keys, target, value)
        figures["corrupt"] += 1
        for args in READERS:
            figures["corrupt_runs"] += 1
            _check(figures, client, keys, args, snapshot(client, keys.prefix))

    one()
    _report(figures, record_property, "corrupt")


# --- the beat engine against a real redis-server ----------------------------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class BeatWorld(NamedTuple):
    build: Callable[[], tuple[KeySpace, SettingsStore, BeatEngine, Clock]]
    client: redis.Redis
    raw: redis.Redis  # not decoding: writes arbitrary bytes
    handler: Records


@pytest.fixture(scope="module")
def beat_world(redis_server: RedisServer) -> Iterator[BeatWorld]:
    """Builds, per example, a fresh prefix with companies ok1, ok2 and acme and a beat engine.

    One for the module: every build is under a prefix of its own, and the engines' change
    watchers (each blocks up to a second on XREAD) are waited for once, at the end.
    """
    from celery import Celery

    app = Celery("fuzz", set_as_current=False)
    client = connect(redis_server.url, check=False)
    raw = redis.Redis.from_url(redis_server.url)
    handler = Records()
    logger = logging.getLogger("erp_sync.beat")
    logger.addHandler(handler)
    engines: list[BeatEngine] = []

    def build() -> tuple[KeySpace, SettingsStore, BeatEngine, Clock]:
        keys = KeySpace(f"fz{uuid.uuid4().hex[:10]}")
        store = SettingsStore(client, keys)
        for company in ("ok1", "ok2", "acme"):
            store.add_company(company, "xero")
            store.add_project(company, "p1")
            store.grant(company, "al", "admin")
        clock = Clock(T0)
        engine = BeatEngine(
            app,
            client,
            keys,
            EngineConfig(lease_seconds=5, max_block=0.0),
            clock=clock,
            node=f"fuzz-{len(engines)}",
        )
        engines.append(engine)
        handler.messages.clear()
        return keys, store, engine, clock

    yield BeatWorld(build, client, raw, handler)
    for engine in engines:
        engine.close()
    for engine in engines:  # their change watchers still use the client for up to a second
        if engine.watcher._thread.is_alive():  # (never started if its example failed first)
            engine.watcher._thread.join(timeout=3)
    logger.removeHandler(handler)
    app.close()
    client.close()
    raw.close()


def _is_corrupt(target: str, value: Any) -> bool:
    """Whether the corruption really makes acme's company record or settings invalid."""
    if target == "wrongtype":
        return value in ("settings", "company")
    models: dict[str, type[BaseModel]] = {"settings": StoredSettings, "company": Company}
    model = models.get(target)
    if model is None:
        return False
    try:
        model.model_validate_json(value.decode(errors="replace"))
    except ValidationError:
        return True
    return False


def _dispatched(client: redis.Redis, keys: KeySpace) -> set[str]:
    """The companies with a queued sync (from each message's arguments: a corrupt project id
    may hold the ``:`` that task ids are joined with)."""
    out = set()
    for queue in ("company", "project"):
        for message in client.lrange(keys.queue(queue), 0, -1):
            _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(message)["body"]))
            out.add(str(kwargs["company"]))
    return out


def _step(figures: Counter[str], engine: BeatEngine) -> None:
    try:
        engine.step()
    except Exception as exc:
        figures["crashes"] += 1
        raise AssertionError(f"beat step crashed: {exc!r}") from exc


@pytest.mark.integration
def test_beat_skips_a_corrupt_company_logs_it_once_and_serves_the_rest(
    beat_world: BeatWorld,
    figures: Counter[str],
    record_property: RecordProperty,
) -> None:
    build, client, raw, handler = beat_world

    @BEAT_FUZZ
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        keys, store, engine, clock = build()
        target, value = data.draw(_corruption(keys, client))
        if target == "run":
            target, value = "settings", value  # beat never reads runs: corrupt settings instead
        _apply_corruption(raw, keys, target, value)
        figures["inputs"] += 1
        figures["beat_corrupt"] += 1
        _step(figures, engine)  # first start: full rebuild, acme included
        store.update_settings("ok1", "al", {"refresh_erp_job_list": False})
        client.xadd(keys.changes, {"company": "acme", "version": "2"})
        _step(figures, engine)
        client.xadd(keys.changes, {"company": "acme", "version": "3"})
        clock.t = T0 + 2 * H + 1
        _step(figures, engine)
        _step(figures, engine)
        assert applied_version(client, keys, "ok1") == 2
        assert applied_version(client, keys, "ok2") == 1
        assert {"ok1", "ok2"} <= _dispatched(client, keys)
        skipped = [m for m in handler.messages if m.startswith("skipping company=acme")]
        if _is_corrupt(target, value):
            assert len(skipped) == 1, handler.messages
            assert not [m for m in zmembers(client, keys.due) if m.startswith("acme:")]
        else:  # beat reads no project record, only the project ids: acme is still served
            assert skipped == []
        engine.close()

    one()
    _report(figures, record_property, "beat_corrupt")


message_fields = st.one_of(
    st.just({"version": "7"}),  # no company
    st.builds(lambda c: {"company": c, "version": "1"}, junk.filter(bool)),  # unknown company
    st.builds(
        lambda v: {"company": "ok1", "version": v},
        st.sampled_from(["", "x", "-1", "1e999", "9" * 400]) | junk.filter(bool),
    ),
    st.just({"company": "c" * 200_000, "version": "1"}),
    st.just({"company": b"\xff\xfe\x00", "version": b"\x80"}),
    st.just({b"\xff": b"\xff", "other": "ok2"}),
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), min_size=1, max_size=3),
)


@pytest.mark.integration
def test_malformed_change_messages_are_survived_and_valid_ones_applied(
    beat_world: BeatWorld,
    figures: Counter[str],
    record_property: RecordProperty,
) -> None:
    build, client, raw, _handler = beat_world

    @BEAT_FUZZ
    @given(messages=st.lists(message_fields, min_size=1, max_size=6), where=st.integers(0, 6))
    def one(messages: list[dict[Any, Any]], where: int) -> None:
        keys, store, engine, _clock = build()
        _step(figures, engine)
        version = 1
        for n, fields in enumerate(messages):
            if n == min(where, len(messages) - 1):
                version = store.update_settings(
                    "ok2", "al", {"sync_project_job_costs": version % 2 == 0}
                )[0].version
            raw.xadd(keys.changes, fields)
            figures["inputs"] += 1
            figures["messages"] += 1
        _step(figures, engine)
        _step(figures, engine)
        assert applied_version(client, keys, "ok2") == version == 2
        assert engine.lease.token is not None
        last = xentries(client, keys.changes)[-1][0]
        assert client.get(keys.beat_cursor) == last  # every message was read past
        engine.close()

    one()
    _report(figures, record_property, "messages")


# --- what the fuzzing found, pinned as plain examples ------------------------------------------

FOUND: dict[str, tuple[list[str], Callable[[redis.Redis, KeySpace], object] | None, str]] = {
    "time zone that is a directory": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "America"],
        None,
        "not an IANA time zone",
    ),
    "time zone name too long": (
        ["company", "add", "x", "--erp", "xero", "--timezone", "a" * 5000],
        None,
        "not an IANA time zone",
    ),
    "no command at all": ([], None, "missing command"),
    "multi-line click message": (
        ["user", "grant", "acme", "bob"],
        None,
        "Missing option '--level'. Choose from: none, read_only,",
    ),
    "settings not UTF-8": (
        ["settings", "show", "acme"],
        lambda raw, keys: raw.set(keys.settings("acme"), b"\xff\xfe{"),
        "settings of 'acme' is corrupt",
    ),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_what_the_fuzzing_found_now_gets_one_clean_line(
    case: str, cli_env: pytest.MonkeyPatch, keys: KeySpace
) -> None:
    args, corrupt, text = FOUND[case]
    client, raw = _world()
    _seed(client, keys)
    if corrupt:
        corrupt(raw, keys)
    before = snapshot(client, keys.prefix)
    code, _out, err, crash = _invoke(client, args)
    assert crash is None and code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    assert snapshot(client, keys.prefix) == before


@pytest.mark.integration
@pytest.mark.parametrize("key", ["settings", "company", "projects"])
def test_a_key_of_the_wrong_redis_type_does_not_stop_beat_for_anyone_else(
    key: str, beat_world: BeatWorld
) -> None:
    build, client, raw, handler = beat_world
    keys, store, engine, clock = build()
    _apply_corruption(raw, keys, "wrongtype", key)
    engine.step()
    store.update_settings("ok1", "al", {"refresh_erp_job_list": False})
    engine.step()
    clock.t = T0 + 2 * H + 1
    engine.step()
    assert applied_version(client, keys, "ok1") == 2
    assert {"ok1", "ok2"} <= _dispatched(client, keys)
    skipped = [m for m in handler.messages if m.startswith("skipping company=acme")]
    assert len(skipped) == (0 if key == "projects" else 1)
