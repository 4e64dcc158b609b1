"""`autoresearch-farm`: run the farm, and look at a run from another terminal.

    autoresearch-farm run [--config PATH] [--repo PATH] [--tag TAG] [--workers N] [--budget S]
                          [--max-experiments N] [--hours H] [--redis URL] [--resume]
                          [--proposer mutate|llm|agent] [--base-url URL] [--model NAME]
    autoresearch-farm check [--config PATH] [--repo PATH] [--budget S] [--ray-address ADDR | --gpus N]
    autoresearch-farm submit  [--address URL] [run options]            a run, as a Ray job
    autoresearch-farm submit  [--address URL] [--tag TAG] (--patch FILE [--description TEXT] | --idea TEXT)
    autoresearch-farm logs|stop TAG_OR_JOB [--address URL]
    autoresearch-farm pull [--tag TAG] [--address URL]
    autoresearch-farm status  [--tag TAG] [--json]
    autoresearch-farm results [--tag TAG] [--format tsv|csv|json]
    autoresearch-farm plot    [--tag TAG] [--out progress.png]
    autoresearch-farm dashboard [--tag TAG] [--port 8050] [--host ADDR [--access-token T]]

status, results, plot, dashboard and submit take `--address [URL]` to reach a run on a Ray cluster; with it (and
with pull), `--home DIR` names the farm's home on the head (default ~/autoresearch-farm). The work is
done elsewhere: cluster/launch.py (run), cluster/remote/client.py (a cluster), cluster/report/ (status,
results, plot, dashboard).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack

from cluster import config as config_mod
from cluster.errors import FarmError
from cluster.remote.protocol import DEFAULT_HOME, SUBMIT_DIR


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config (see configs/); defaults are configs/default.toml's")
    p.add_argument("--repo", help="git repository whose train.py is researched (default: the current directory)")
    p.add_argument("--tag", help="run name (default: today's date, e.g. nov25)")
    p.add_argument("--redis", help="redis:// or unix:// URL of the store (default: an embedded server)")
    p.add_argument("-v", "--verbose", action="store_true", help="log the farm's internals")


def _cluster(p: argparse.ArgumentParser, optional: bool = False, home: bool = True) -> None:
    """--address / --token (and --home, where the head's files are read): talk to a run on a Ray cluster
    through its Jobs API."""
    if optional:
        p.add_argument("--address", nargs="?", const="", default=None,
                       help="read the run on the Ray cluster at ADDRESS (alone: RAY_ADDRESS), e.g. http://HEAD:8265")
    else:
        p.add_argument("--address", default="", help="the cluster's dashboard, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--token", help="Ray's auth token, if the cluster uses token auth (default: RAY_AUTH_TOKEN or its file)")
    if home:
        p.add_argument("--home", default=DEFAULT_HOME, metavar="DIR",
                       help=f"the farm's home on the cluster's head, for --address (default: {DEFAULT_HOME})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch-farm", description=(
        "Run the autoresearch loop (edit train.py, train for a fixed budget, keep what lowers val_bpb) "
        "on every GPU of a Ray cluster."))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the farm until done, out of time, or Ctrl-C")
    _common(run)
    run.add_argument("--workers", type=int, help="number of workers (default: one per GPU)")
    run.add_argument("--budget", type=float, help="training seconds per experiment")
    run.add_argument("--max-experiments", type=int, help="stop once this many candidates have a final result")
    run.add_argument("--hours", type=float, help="stop after this many hours")
    run.add_argument("--resume", action="store_true", help="continue the run TAG from its stored state")
    run.add_argument("--proposer", choices=("mutate", "llm", "agent"), help="who writes the candidates")
    run.add_argument("--base-url", help="the llm proposer's OpenAI-compatible endpoint")
    run.add_argument("--model", help="the llm proposer's model")
    run.add_argument("--ray-address", default="", help="Ray cluster to use (default: RAY_ADDRESS, else a local one)")
    run.add_argument("--no-dashboard", action="store_true", help="start a local Ray without its dashboard")
    run.add_argument("--metrics-port", type=int, help="a local Ray serves Prometheus metrics on this port")

    check = sub.add_parser("check", help="read the target and say whether the farm would run it (no Ray started)",
                           description=(
        "The pre-flight `run` does before any worker starts: the harness's shape, the budget, the training "
        "command, CUDA, the imports, the prepared data, the seeding and the trust level, read from the "
        "repository's HEAD. Exit 0 when it would run, 2 with every refusal when it would not."))
    _common(check)
    check.add_argument("--budget", type=float, help="training seconds per experiment")
    check.add_argument("--ray-address", default="", help="count the GPUs of this Ray cluster (default: RAY_ADDRESS, "
                       "else this machine's, torch.cuda.device_count())")
    check.add_argument("--gpus", type=float, help="check as for a cluster with this many GPUs")

    submit = sub.add_parser("submit", help="submit a run to a Ray cluster, or a patch or idea into a run",
                            description=(
        "Without --patch/--idea: submit a whole run to the Ray cluster at --address (or RAY_ADDRESS) through "
        "the Jobs API, with any `run` option (e.g. --config FILE --workers N --budget S --max-experiments N "
        "--tag TAG); the committed HEAD of this repository ships as the job; prints the job id, the tag and "
        "the dashboard URL, and returns. With --patch FILE (a unified diff of train.py, validated like every "
        "proposal, then queued) or --idea TEXT (the llm/agent proposer implements it next): a candidate into "
        "a run, local or (with --address) on the cluster. A stopped run takes it up on --resume."))
    _common(submit)
    _cluster(submit)
    what = submit.add_mutually_exclusive_group()
    what.add_argument("--patch", metavar="FILE", help="a unified diff of the editable file ('-' reads stdin)")
    what.add_argument("--idea", metavar="TEXT", help="an idea for the LLM or agent proposer to implement")
    submit.add_argument("--description", help="the candidate's one-line description (default: derived)")

    logs = sub.add_parser("logs", help="stream the log of a run submitted to a cluster")
    logs.add_argument("job", help="the run's tag or its job id")
    _cluster(logs, home=False)
    stop = sub.add_parser("stop", help="stop a run submitted to a cluster (running candidates go back to the queue)")
    stop.add_argument("job", help="the run's tag or its job id")
    _cluster(stop, home=False)
    pull = sub.add_parser("pull", help="fetch a cluster run's main line and candidate branches into this repository")
    pull.add_argument("--tag", help="the run (default: the newest submitted from this repository)")
    pull.add_argument("--repo", help="the local clone (default: the current directory)")
    pull.add_argument("--force", action="store_true", help="move the local main-line branch even if it diverged")
    _cluster(pull)

    status = sub.add_parser("status", help="show a run's state")
    _common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _cluster(status, optional=True)

    plot = sub.add_parser("plot", help="draw a run's progress to a PNG")
    _common(plot)
    plot.add_argument("--out", default="progress.png", help="the PNG to write (default: progress.png)")
    _cluster(plot, optional=True)

    results = sub.add_parser("results", help="print a run's results")
    _common(results)
    results.add_argument("--format", choices=("tsv", "csv", "json"), default="tsv",
                         help="tsv: autoresearch's results.tsv; csv/json: every measurement in full")
    _cluster(results, optional=True)

    dash = sub.add_parser("dashboard", help="serve a live web page of a run (http://127.0.0.1:8050/)", description=(
        "A local web server with the run (progress chart, main line, noise floor, rates and costs), the workers "
        "(what each runs, elapsed against the budget, the queue) and each candidate (diff, measurements, the "
        "judge's decisions, loss curve, log tail) at /c/<id>, updated live. It reads the same records as status "
        "and results: the run's store here, or with --address the run on a Ray cluster. Ctrl-C stops it."))
    _common(dash)
    dash.add_argument("--port", type=int, default=8050, help="the port to listen on (default: 8050; 0: any free one)")
    dash.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this "
                      "machine only); any other needs the access token")
    dash.add_argument("--access-token", default=os.environ.get("AUTORESEARCH_FARM_DASHBOARD_TOKEN"),
                      help="the token every request needs when --host is not loopback (default: "
                      "AUTORESEARCH_FARM_DASHBOARD_TOKEN, else one made at start and printed in the URL)")
    dash.add_argument("--interval", type=float, help="seconds between reads of the run (default: 2; with --address: "
                      "15, each read there is a short Ray job)")
    dash.add_argument("--snapshot", action="store_true", help="print the run's page data as JSON once, and exit")
    dash.add_argument("--candidate", metavar="ID", help="with --snapshot: one candidate's page data")
    _cluster(dash, optional=True)
    return parser


def load_config(args: argparse.Namespace, stored: dict | None = None) -> config_mod.FarmConfig:
    """Defaults (or a resumed run's stored config), then --config's file, then flags."""
    base = config_mod.from_dict(stored) if stored else None
    cfg = config_mod.load(args.config, base)
    overrides = {
        "run.repo": args.repo, "run.tag": args.tag, "store.redis": args.redis,
        "workers.count": getattr(args, "workers", None), "train.budget": getattr(args, "budget", None),
        "run.max_experiments": getattr(args, "max_experiments", None), "run.hours": getattr(args, "hours", None),
        "proposer.kind": getattr(args, "proposer", None), "proposer.base_url": getattr(args, "base_url", None),
        "proposer.model": getattr(args, "model", None),
    }
    return cfg.with_overrides(overrides)


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.launch import run_farm

    cfg = load_config(args)
    if args.resume:  # the run continues with the settings it was started with, unless flags say otherwise
        with ExitStack() as stack:
            from cluster.launch import open_run

            meta = open_run(cfg, stack).store.run_meta()
        if meta and meta.get("config"):
            cfg = load_config(args, stored=meta["config"])
    why = run_farm(cfg, resume=args.resume, report=_say, ray_address=args.ray_address,
                   dashboard=not args.no_dashboard, metrics_port=args.metrics_port)
    return 0 if why != "stopped" else 130


def _gpu_count(args: argparse.Namespace) -> tuple[float | None, str]:
    """The GPUs `check` checks against, and where the number comes from. A Ray address is joined (never
    started); a Jobs API address (http://...) cannot say, so the count is left unknown there."""
    if args.gpus is not None:
        return args.gpus, f"{args.gpus:g} GPU(s), as --gpus says"
    address = args.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address.startswith(("http://", "https://")):
        return None, (f"{address} is a Jobs API address, whose GPUs are not known here: pass --gpus N (a run "
                      "submitted there is checked again on the cluster)")
    if address:
        import ray

        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as e:
            raise FarmError(f"cannot connect to the Ray cluster at {address}: {e}. Is it up (`ray status`)?") from None
        try:
            gpus = float(ray.cluster_resources().get("GPU", 0))
        finally:
            ray.shutdown()
        return gpus, f"{gpus:g} GPU(s) in the Ray cluster at {address}"
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except ImportError:
        gpus = 0.0
    return gpus, f"{gpus:g} GPU(s) on this machine (torch.cuda.device_count())"


def cmd_check(args: argparse.Namespace) -> int:
    from cluster.launch import open_repo
    from cluster.preflight import preflight

    cfg = load_config(args)
    gpus, where = _gpu_count(args)
    _say(f"GPUs: {where}")
    with ExitStack() as stack:
        preflight(cfg, open_repo(cfg, stack), gpus, report=_say)
    _say("check: the farm would run this target (`autoresearch-farm run` with the same flags)")
    return 0


def _open_store(args: argparse.Namespace, stack: ExitStack):
    from cluster.launch import open_run
    from cluster.store import Store

    cfg = load_config(args)
    ctx = open_run(cfg, stack)
    if ctx.store.run_meta() is None:
        runs = Store.list_runs(ctx.store.r, cfg.store.prefix)
        hint = f"runs in this store: {', '.join(runs)}" if runs else "no runs in this store yet"
        raise FarmError(f"no run {ctx.tag!r} ({hint}); pass --tag")
    return ctx.store


def cmd_status(args: argparse.Namespace) -> int:
    if args.address is not None:
        return _remote(args, ["status"] + (["--json"] if args.json else []))
    from cluster.report.status import format_status, status_dict

    with ExitStack() as stack:
        s = status_dict(_open_store(args, stack))
    if args.json:
        print(json.dumps(s, indent=2))
    else:
        sys.stdout.write(format_status(s))
    return 0


def cmd_submit(args: argparse.Namespace, rest: list[str]) -> int:
    from cluster.remote import client as remote

    if not (args.patch or args.idea):  # a whole run, as a Ray job
        run_args = rest + (["--config", args.config] if args.config else [])
        build_parser().parse_args(["run", *run_args])  # refuse bad run options here, with run's usage
        job_id, tag, url = remote.submit_run(args.address, args.repo or ".", run_args, tag=args.tag, token=args.token,
                                             head_home=args.home)
        print(f"submitted run {tag} as job {job_id}\n  dashboard: {url}\n"
              f"  follow it: autoresearch-farm logs {tag} --address {remote.resolve_address(args.address)}")
        return 0
    if rest:
        raise FarmError(f"unexpected arguments with --patch/--idea: {' '.join(rest)}")
    if args.address is not None and (args.address or os.environ.get("RAY_ADDRESS")):
        if args.idea:
            argv, files = ["submit", "--idea", args.idea], None
        else:
            argv = ["submit", "--patch", f"{SUBMIT_DIR}/patch.diff"]
            files = {"patch.diff": sys.stdin.read() if args.patch == "-" else _read(args.patch)}
        if args.description:
            argv += ["--description", args.description]
        return _remote(args, argv, files)
    return _submit_local(args)


def _remote(args: argparse.Namespace, argv: list[str], files: dict[str, str] | None = None) -> int:
    from cluster.remote import client as remote

    rc, out, err = remote.remote_cli(args.address or None, getattr(args, "repo", None) or ".", argv, tag=args.tag,
                                     token=args.token, head_home=args.home, files=files)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return rc


def _submit_local(args: argparse.Namespace) -> int:
    from cluster.errors import PatchError

    with ExitStack() as stack:
        store = _open_store(args, stack)
        meta = store.run_meta()
        if args.idea:
            if meta.get("config", {}).get("proposer", {}).get("kind") == "mutate":
                print(f"note: run {store.tag} uses the offline proposer, which does not read ideas; "
                      "it keeps the idea for a run resumed with --config proposer.kind = llm or agent")
            store.send("idea", args.idea)
            print(f"idea sent to run {store.tag}")
        else:
            text = sys.stdin.read() if args.patch == "-" else _read(args.patch)
            from cluster.launch import open_repo

            repo = open_repo(load_config(args), stack)
            try:  # fail fast here; the farm checks again against the main line it has then
                repo.apply_diff(meta["main"], text)
            except PatchError as e:
                raise FarmError(f"the patch does not apply to the main line of run {store.tag}: {e}") from None
            store.send("patch", text, args.description or "")
            print(f"patch sent to run {store.tag}")
        if meta.get("status") != "running":
            print(f"run {store.tag} is {meta.get('status')}: it takes this up after `autoresearch-farm run "
                  f"--tag {store.tag} --resume`")
    return 0


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise FarmError(f"cannot read {path}: {e.strerror}") from None


def cmd_results(args: argparse.Namespace) -> int:
    from cluster.report.results import render

    if args.address is not None:
        return _remote(args, ["results", "--format", args.format])
    with ExitStack() as stack:
        sys.stdout.write(render(_open_store(args, stack), args.format))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cluster.report.plot import plot
    from cluster.report.results import tsv_rows

    if args.address is not None:  # the rows come from the cluster, the picture is drawn here
        from cluster.remote import client as remote

        rc, tsv, err = remote.remote_cli(args.address or None, args.repo or ".", ["results"], tag=args.tag,
                                         token=args.token, head_home=args.home)
        if rc:
            raise FarmError(err.strip() or "the cluster could not read the run")
        header, *lines = tsv.splitlines()
        rows, tag = [dict(zip(header.split("\t"), ln.split("\t"))) for ln in lines], args.tag or "(newest)"
    else:
        with ExitStack() as stack:
            store = _open_store(args, stack)
            rows, tag = tsv_rows(store), store.tag
    try:
        out = plot(rows, tag, Path(args.out))
    except ValueError as e:
        raise FarmError(str(e)) from None
    print(f"wrote {out}")
    return 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cmd_dashboard(args: argparse.Namespace) -> int:
    import secrets

    from cluster.report import web
    from cluster.report.sources import LocalSource, RemoteSource

    if args.candidate and not args.snapshot:
        raise FarmError("--candidate goes with --snapshot; the dashboard shows each candidate at /c/<id>")
    remote = args.address is not None
    source = (RemoteSource(args.address or None, args.repo or ".", args.tag, token=args.token, head_home=args.home)
              if remote else LocalSource(load_config(args)))
    try:
        first = source.candidate(args.candidate) if args.candidate else source.run()  # a bad tag or address: here
        if args.snapshot:
            print(json.dumps(first, default=str))
            return 0
        token = args.access_token or (None if web.is_loopback(args.host) else secrets.token_urlsafe(18))
        dash = web.Dashboard(source.run, source.candidate, interval=args.interval or (15.0 if remote else 2.0),
                             token=token)
        server = web.make_server(dash, args.host, args.port)
        _say(f"dashboard of run {first['tag']}: {server.url()} (Ctrl-C stops it)")
        signal.signal(signal.SIGTERM, _interrupt)  # stopped as by Ctrl-C: the embedded Redis it opened is closed
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        source.close()
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from cluster.remote import client as remote

    job = remote.resolve_job(args.address or None, args.job, args.token)
    final = remote.follow_logs(args.address or None, job, token=args.token)
    print(f"job {job}: {final}")
    return 0 if final == "SUCCEEDED" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    from cluster.remote import client as remote

    job = remote.resolve_job(args.address or None, args.job, args.token)
    final = remote.stop_job(args.address or None, job, token=args.token)
    tag = remote.job_status(args.address or None, job, args.token).get("tag") or "TAG"
    print(f"job {job}: {final}; `autoresearch-farm submit --address ... --tag {tag} --resume` continues it")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from cluster.remote import client as remote

    changed = remote.pull(args.address or None, args.repo or ".", args.tag, force=args.force, token=args.token,
                          head_home=args.home)
    for branch, sha in changed.items():
        print(f"{branch} -> {sha[:12]}")
    print(f"{len(changed)} branch(es) updated")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = {"run": cmd_run, "check": cmd_check, "submit": lambda a: cmd_submit(a, rest), "status": cmd_status,
               "results": cmd_results, "plot": cmd_plot, "logs": cmd_logs, "stop": cmd_stop,
               "pull": cmd_pull, "dashboard": cmd_dashboard}[args.command]
    t0 = time.time()
    try:
        return handler(args)
    except FarmError as e:
        print(f"autoresearch-farm: error: {e}", file=sys.stderr)
        return 2
    finally:
        logging.getLogger(__name__).info("%s took %.1fs", args.command, time.time() - t0)


if __name__ == "__main__":
    sys.exit(main())
