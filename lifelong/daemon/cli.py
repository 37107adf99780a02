"""The ``lifelong`` command line: run, status, broker. Logging and signal handlers live here only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from lifelong.config import Settings, load_settings
from lifelong.daemon.process import pin_mmap_threshold
from lifelong.errors import LifelongError
from lifelong.files import disk_full, is_disk_full

log = logging.getLogger("lifelong")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "faiss", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" each interval a round outlasts.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        return _run(settings, burst=args.burst)
    except OSError as error:  # at start or at exit: the running loop says so itself
        if not is_disk_full(error):
            raise
        raise disk_full(Path(settings.state.dir), error) from error


def _run(settings: Settings, *, burst: bool) -> int:
    from lifelong.daemon.app import RunState
    from lifelong.daemon.wiring import build_daemon

    with ExitStack() as stack:
        daemon = build_daemon(settings, stack)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if daemon.state in (RunState.STOPPING, RunState.STOPPED) and daemon.control is not None:
                log.warning("received %s again: abandoning the update round now", signal.Signals(signum).name)
                daemon.control.abandon()
                return
            log.info("received %s: stopping", signal.Signals(signum).name)
            daemon.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            daemon.run(burst=burst)
        finally:
            log.info(daemon.summary())
        if daemon.control is not None and daemon.control.running:
            # A round past the grace period: state and offsets are saved; do not wait for it.
            logging.shutdown()
            os._exit(0)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    effective = _settings(args).model_dump(mode="json")  # secrets print as "**********"
    if args.json:
        print(json.dumps(effective, indent=2))
        return 0
    for section, keys in effective.items():
        print(f"[{section}]")
        for key, value in keys.items():
            print(f"{key} = {json.dumps(value)}")
        print()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from lifelong.daemon.app import RunState, read_heartbeat
    from lifelong.daemon.wiring import heartbeat_path
    from lifelong.errors import StateDamaged
    from lifelong.memory.opening import DATABASE
    from lifelong.memory.samples import SampleStore

    settings = _settings(args)
    if args.state:
        # Read-only beside a running daemon (WAL readers do not block it); the full check can take minutes.
        try:
            with SampleStore.open(settings.state.dir, readonly=True, check_s=None) as store:
                problems = store.check(full=True)
        except StateDamaged as error:  # too damaged to open
            problems = [str(error)]
        file = str(Path(settings.state.dir) / DATABASE)
        print(json.dumps({"ok": not problems, "problems": problems, "file": file}))
        return 0 if not problems else 1
    path = heartbeat_path(settings)
    beat = read_heartbeat(path)
    if beat is None:
        print(json.dumps({"ok": False, "reason": f"no readable heartbeat at {path}"}))
        return 1
    age = time.time() - float(beat["ts"])
    stale_after = float(beat.get("stale_after_s", settings.http.heartbeat_stale_s))
    ok = beat.get("state") == RunState.RUNNING.value and age <= stale_after
    reason = (
        "running"
        if ok
        else f"state {beat.get('state')!r}"
        if beat.get("state") != RunState.RUNNING.value
        else f"heartbeat {age:.0f}s old (limit {stale_after:.0f}s)"
    )
    print(json.dumps({"ok": ok, "reason": reason, "age_s": round(age, 3), "pid": beat.get("pid")}))
    return 0 if ok else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from lifelong.daemon.wiring import memory_status, open_store

    settings = _settings(args)
    with open_store(settings, readonly=True) as store:
        status = store.status().as_dict()
    status["memory"] = memory_status(settings)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key}: {value}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    from lifelong.daemon.app import StateLock
    from lifelong.daemon.wiring import open_memory, open_store

    settings = _settings(args)
    with StateLock(settings.state.dir), open_store(settings) as store:
        in_store = store.forget(args.ids)
        memory = open_memory(settings, store=store)
        try:
            in_memory = memory.forget(args.ids)
            memory.snapshot()  # and drops the older snapshots that still name them
        finally:
            memory.close()
    found = set(in_store) | set(in_memory)
    print(
        json.dumps(
            {
                "forgotten": [i for i in args.ids if i in found],
                "not_found": [i for i in args.ids if i not in found],
            }
        )
    )
    return 0


def _cmd_versions(args: argparse.Namespace) -> int:
    from lifelong.registry import open_registry

    versions = open_registry(_settings(args)).versions()
    if args.json:
        print(json.dumps([v.to_json() for v in versions], indent=2))
        return 0
    print(f"{'VERSION':>7}  {'STATUS':<11}  {'CREATED (UTC)':<19}  {'PARENT':>6}  SCORES / REASON")
    for v in versions:
        created = datetime.fromtimestamp(v.created_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        scores = " ".join(
            f"{k}={v.scores[k]:.3f}" for k in ("candidate_recent", "candidate_memory") if k in v.scores
        )
        note = (v.rolled_back or {}).get("reason") if v.status == "rolled_back" else v.reason
        parent = "-" if v.parent is None else str(v.parent)
        print(f"{v.version:>7}  {v.status.value:<11}  {created:<19}  {parent:>6}  {scores}  {note or ''}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from lifelong.registry import open_registry

    registry = open_registry(_settings(args))
    before = registry.champion()
    after = registry.rollback(args.version, reason=args.reason, trigger="manual")
    print(
        json.dumps(
            {
                "rolled_back": before.version if before else None,
                "champion": after.version,
                "reason": args.reason,
            }
        )
    )
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from lifelong.connectors.broker import broker_command, free_port

    port = args.port if args.port is not None else free_port(args.host)
    command = broker_command(host=args.host, port=port)
    print(f"embedded broker (memory only) on {args.host}:{port}", flush=True)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


def _cmd_produce(args: argparse.Namespace) -> int:
    from lifelong.demo.produce import produce

    settings = _settings(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sent = produce(
            settings,
            dataset=args.dataset,
            rate=args.rate,
            feedback_delay_s=args.feedback_delay,
            loop=args.loop,
            stop=stop,
        )
    except ValueError as error:
        log.error("%s", error)
        return 2
    print(json.dumps({"samples": sent}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from lifelong.demo.run import run_demo

    summary = run_demo(
        state_dir=args.state_dir, report_dir=args.report_dir, dataset=args.dataset, per_task=args.per_task
    )
    return 0 if summary["rollback_demonstrated"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lifelong``."""
    parser = argparse.ArgumentParser(
        prog="lifelong",
        description="A continual-learning daemon: consumes samples and feedback from Kafka "
        "and keeps a model learning without forgetting.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('lifelong')}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LIFELONG_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("LIFELONG_LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="log lines as text or JSON objects",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="consume the topics into the state directory",
        description="Consume samples and feedback into the durable state.",
    )
    run.add_argument("--config", "-c", help="TOML settings file (LIFELONG_* env overrides it)")
    run.add_argument(
        "--burst",
        action="store_true",
        help="exit once every partition is drained (tests, backfills)",
    )
    run.set_defaults(handler=_cmd_run)

    config = commands.add_parser(
        "config",
        help="print the effective settings (file, then LIFELONG_* environment overrides), secrets masked",
        description="Validate the settings as `lifelong run` would and print the effective values: the "
        "TOML file's, overridden by LIFELONG_<SECTION>__<KEY> environment variables, over the defaults. "
        "Exit 2 naming the key when they are invalid.",
    )
    config.add_argument("--config", "-c", help="TOML settings file")
    config.add_argument("--json", action="store_true", help="print JSON")
    config.set_defaults(handler=_cmd_config)

    check = commands.add_parser(
        "check",
        help="exit 0 if the daemon is running and its heartbeat is fresh (or the state is intact), else 1",
        description="Read the heartbeat the daemon writes in its state directory: exit 0 when it is "
        "running and the heartbeat is newer than [http] heartbeat_stale_s, 1 otherwise (for "
        "systemd, cron or a container health check). With --state, run SQLite's full integrity "
        "check of the sample store instead (safe while the daemon runs): exit 0 when it is intact, "
        "1 when it is damaged, printing the problems found.",
    )
    check.add_argument("--config", "-c", help="TOML settings file")
    check.add_argument(
        "--state", action="store_true", help="check the sample store's integrity instead of the heartbeat"
    )
    check.set_defaults(handler=_cmd_check)

    status = commands.add_parser(
        "status",
        help="print what the state directory holds",
        description="Counts of stored samples, labels, waiting halves, dead letters, and the offsets held.",
    )
    status.add_argument("--config", "-c", help="TOML settings file")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_cmd_status)

    forget = commands.add_parser(
        "forget",
        help="erase samples by id from the state and the rehearsal memory",
        description="Erase samples by id from the sample store, the rehearsal memory and its snapshots. "
        "Stop the daemon first: it holds the state directory.",
    )
    forget.add_argument("--config", "-c", help="TOML settings file")
    forget.add_argument("ids", nargs="+", metavar="ID", help="sample ids to forget")
    forget.set_defaults(handler=_cmd_forget)

    versions = commands.add_parser(
        "versions",
        help="list the model versions and which one serves",
        description="Every model version in the registry: status (champion, promoted, rejected, "
        "rolled_back), creation time, parent and gate scores.",
    )
    versions.add_argument("--config", "-c", help="TOML settings file")
    versions.add_argument("--json", action="store_true", help="print a JSON list")
    versions.set_defaults(handler=_cmd_versions)

    rollback = commands.add_parser(
        "rollback",
        help="serve the previous (or the named) promoted model version again",
        description="Make an earlier promoted version the champion and mark the current one rolled back; "
        "the daemon never promotes a rolled-back version again on its own. Safe while the daemon runs: "
        "it follows within one update interval.",
    )
    rollback.add_argument("--config", "-c", help="TOML settings file")
    rollback.add_argument("version", nargs="?", type=int, help="version to return to (default: the previous)")
    rollback.add_argument("--reason", default="manual rollback", help="recorded with the rollback")
    rollback.set_defaults(handler=_cmd_rollback)

    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker",
        description="Run Tansu (memory only: topics vanish on exit) "
        "in the foreground, for development and demos.",
    )
    broker.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on")
    broker.set_defaults(handler=_cmd_broker)

    produce = commands.add_parser(
        "produce",
        help="stream a benchmark into the configured topics (a demo producer)",
        description="Send a benchmark's samples to [kafka] samples_topic at a steady rate, half labeled "
        "inline and half through feedback a few seconds later, to try a deployment end to end.",
    )
    produce.add_argument("--config", "-c", help="TOML settings file")
    produce.add_argument(
        "--dataset",
        choices=["split-digits", "split-fashion-mnist", "permuted-fashion-mnist"],
        default="split-digits",
        help="the stream (its features and classes must match [data])",
    )
    produce.add_argument("--rate", type=float, default=100.0, help="samples per second")
    produce.add_argument("--feedback-delay", type=float, default=5.0, help="seconds before late labels")
    produce.add_argument("--loop", action="store_true", help="start over with fresh ids at the end")
    produce.set_defaults(handler=_cmd_produce)

    demo = commands.add_parser(
        "demo",
        help="run the whole loop against the embedded broker",
        description="Stream split Fashion-MNIST (or scikit-learn's digits) through the embedded broker "
        "into the daemon with delayed feedback, show its progress live, roll back through the admin API, "
        "and write an HTML report with plots to demo-report/.",
    )
    demo.add_argument("--state-dir", type=Path, default=Path("demo-state"), help="state directory to use")
    demo.add_argument("--report-dir", type=Path, default=Path("demo-report"), help="where the report goes")
    demo.add_argument(
        "--dataset",
        choices=["auto", "split-fashion-mnist", "split-digits"],
        default="auto",
        help="the stream (auto: Fashion-MNIST when installed, else scikit-learn's digits)",
    )
    demo.add_argument(
        "--per-task", type=int, default=None, help="training samples per task (default: 6000 Fashion-MNIST)"
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lifelong`` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    pin_mmap_threshold()
    try:
        return int(args.handler(args))
    except LifelongError as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
