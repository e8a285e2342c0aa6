"""A chaos soak: many small jobs through an up-local stack while its processes are killed.

A LocalStack as ``ghibli-anim up-local`` runs it (the deployment's nats.conf with a user
per service, SeaweedFS, planner, depth, assembler and **two renderers**, each its own
process, supervised: a process that dies is started again) on the ``tiny`` profile.
``--jobs`` jobs of 2 to 4 frames (a third of them depth-guided) are submitted evenly over
``--minutes`` minutes by ten clients, each with an idempotency key, retried until the
planner answers (it may be down). Meanwhile a chaos loop SIGKILLs, every 20 to 40 s, one
of a renderer, the depth worker, the planner or the nats-server, drawn at random (all of
it seeded by ``--seed``), and the stack's supervisor starts it again. Once every job is
submitted the chaos stops and the jobs get ``--drain-minutes`` to finish.

Then it checks and prints:

- jobs submitted, completed, failed (with their reasons), and any left unfinished;
- every completed job's frames exactly once: one ``frame.rendered`` per frame and
  attempt covering every frame, exactly one PNG and one record per frame in the store,
  the manifest naming each frame once with the sha256 of the stored PNG, frames_done;
- a sample of ``--sample`` completed jobs rendered again, undisturbed, in embedded
  mode, and compared byte for byte with the soak's frames;
- the per-client cap: slots held (the job store's slot records, counting what a create
  would count) against unfinished jobs per client, the status counters against the jobs
  themselves, the unfinished-job entries against the unfinished jobs;
- no process left after the stack stops: none below this process, none working in the
  stack's folder, no port of the stack answering;
- the kills done per target and the supervisor's restarts.

The last line is one ``key=value`` summary; the exit status is 1 when a check failed.
Not part of CI nor of ``make bench``: ``make soak`` runs it, ``--quick`` (20 jobs over
2 minutes) is a short run of the same.

    python bench/soak.py [--jobs 200] [--minutes 10] [--seed 1] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import tenacity

from ghibli_anim.contracts import config, keys
from ghibli_anim.contracts.lifecycle import is_terminal
from ghibli_anim.contracts.pb import animation_pb2, bus_pb2, types_pb2
from ghibli_anim.devtools.procfs import descendants
from ghibli_anim.devtools.stack import LocalStack, tiny_cpu_env
from ghibli_anim.runtime.bus.connection import connect
from ghibli_anim.runtime.client import AnimationClient
from ghibli_anim.runtime.jobstore import SLOT_GRACE_S, JobStore, slot_key
from ghibli_anim.runtime.processes import port_answers
from ghibli_anim.runtime.store.s3 import S3Store

IDEAS = (
    "a lantern festival by the river",
    "a dragon glides over a medieval town at dusk",
    "a cat naps on a sunny windowsill",
    "a train crosses a field of sunflowers",
    "a lighthouse in a storm",
)
TARGETS = ("renderer", "depth", "planner", "nats-server")
"""What the chaos loop kills (a renderer: one of the replicas, drawn too)."""
RENDERERS = 2
CLIENTS = 10
KILL_INTERVAL_S = (20.0, 40.0)
FRAME_RANGE = (2, 4)
DEPTH_SHARE = 1 / 3
SUBMIT_GIVE_UP_S = 120.0
"""How long a job's create is retried while the planner (or NATS) is down."""


# -- the plan (pure: the unit tests check these) --------------------------------


@dataclass(frozen=True)
class PlannedJob:
    index: int
    at_s: float  # when to submit it, from the start of the soak
    frames: int
    depth: bool
    seed: int
    idea: str
    client: str

    def request(self, run_seed: int) -> animation_pb2.CreateAnimationRequest:
        return animation_pb2.CreateAnimationRequest(
            idea=self.idea,
            frames=self.frames,
            seed=self.seed,
            profile="tiny",
            depth=self.depth,
            client_id=self.client,
            idempotency_key=f"soak-{run_seed}-{self.index}",
        )


def plan_jobs(jobs: int, minutes: float, seed: int) -> list[PlannedJob]:
    """``jobs`` jobs spread evenly over ``minutes`` (the first at 0 s), each with its
    frames, depth, seed, idea and client drawn from ``seed``."""
    if jobs < 1 or minutes <= 0:
        raise ValueError(f"jobs >= 1 and minutes > 0, got {jobs} and {minutes}")
    rng = random.Random(f"jobs-{seed}")
    step = minutes * 60 / jobs
    return [
        PlannedJob(
            index=i,
            at_s=i * step,
            frames=rng.randint(*FRAME_RANGE),
            depth=rng.random() < DEPTH_SHARE,
            seed=rng.randrange(2**31),
            idea=rng.choice(IDEAS),
            client=f"soak-{i % CLIENTS}",
        )
        for i in range(jobs)
    ]


@dataclass(frozen=True)
class Kill:
    at_s: float
    target: str  # one of TARGETS
    replica: int = 0  # which renderer


def plan_kills(minutes: float, seed: int, interval_s=KILL_INTERVAL_S) -> list[Kill]:
    """The chaos: a kill every ``interval_s`` (uniform), drawn from ``seed``, until
    ``minutes`` are over."""
    rng = random.Random(f"kills-{seed}")
    kills, at = [], 0.0
    while True:
        at += rng.uniform(*interval_s)
        if at >= minutes * 60:
            return kills
        target = rng.choice(TARGETS)
        replica = rng.randrange(RENDERERS) if target == "renderer" else 0
        kills.append(Kill(at, target, replica))


def frame_problems(
    frames: int,
    rendered: list[tuple[int, int]],
    stored: list[str],
    manifest: dict | None,
    png_sha256: dict[int, str],
    frames_done: int,
) -> list[str]:
    """What breaks "every frame exactly once" for one completed job of ``frames`` frames:
    ``rendered`` = (frame, attempt) of each frame.rendered event, ``stored`` = the keys
    under ``jobs/{id}/frames/``, ``png_sha256`` = sha256 of each stored PNG."""
    problems = []
    if sorted({f for f, _ in rendered}) != list(range(frames)):
        problems.append(f"frame.rendered for frames {sorted({f for f, _ in rendered})}")
    doubled = [fa for fa, n in Counter(rendered).items() if n > 1]
    if doubled:
        problems.append(f"frame.rendered twice for (frame, attempt) {sorted(doubled)}")
    for suffix in (".png", ".json"):
        names = sorted(k.rsplit("/", 1)[-1] for k in stored if k.endswith(suffix))
        if names != [f"{i:04d}{suffix}" for i in range(frames)]:
            problems.append(f"stored {suffix} frames {names}")
    if manifest is None:
        problems.append("no manifest")
    else:
        listed = manifest.get("frames", [])
        if [f.get("index") for f in listed] != list(range(frames)):
            problems.append(f"manifest frames {[f.get('index') for f in listed]}")
        for entry in listed:
            index = entry.get("index")
            if entry.get("sha256") != png_sha256.get(index):
                problems.append(f"manifest sha256 of frame {index} is not the stored PNG's")
    if frames_done != frames:
        problems.append(f"frames_done {frames_done} of {frames}")
    return problems


def summary_line(figures: dict[str, object]) -> str:
    """``key=value`` pairs in order, one line (the last line the soak prints)."""
    return " ".join(f"{k}={v}" for k, v in figures.items())


# -- the run ---------------------------------------------------------------------


@dataclass
class Outcome:
    job: PlannedJob
    job_id: str = ""
    status: int = types_pb2.JOB_STATUS_UNSPECIFIED
    error: str = ""
    frames_done: int = 0
    retries: int = 0  # creates sent again while the planner did not answer
    seconds: float = 0.0  # from its create's answer to the end of its events
    rerendered: int = 0  # frames rendered more than once (a later attempt after a kill)
    problems: list[str] = field(default_factory=list)


def _status(code: int) -> str:
    return types_pb2.JobStatus.Name(code).removeprefix("JOB_STATUS_")


# Answers that trying again does not change; any other failure is the planner or NATS
# being down for a few seconds.
_REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() not in _REFUSALS
    return isinstance(exc, TimeoutError)


async def _call(what, budget_s: float):
    """``what()`` until it answers or ``budget_s`` seconds pass, a try a second: the
    planner or NATS may be down for a few seconds at any time. A refusal is final."""
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception(_transient),
        wait=tenacity.wait_fixed(1.0),
        stop=tenacity.stop_after_delay(budget_s),
        reraise=True,
    )

    async def attempt():
        return await what()  # ``what`` may be a lambda: tenacity awaits only coroutine functions

    return await retrying(attempt)


async def _run_job(
    client: AnimationClient, out: Outcome, run_seed: int, t0: float, deadline: float
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t0 + out.job.at_s - loop.time()))
    request = out.job.request(run_seed)

    async def create():
        out.retries += 1
        return await client.create(request)

    try:
        created = await _call(create, SUBMIT_GIVE_UP_S)
    except grpc.aio.AioRpcError as exc:
        out.error = f"not accepted: {exc.code().name}: {exc.details()}"
        return
    except TimeoutError:
        out.error = f"not accepted within {SUBMIT_GIVE_UP_S:g} s"
        return
    out.retries -= 1
    out.job_id = created.job_id
    accepted = loop.time()
    last = 0

    async def follow() -> None:
        nonlocal last
        async for event in client.watch(out.job_id, after_sequence=last):
            last = event.sequence or last

    while loop.time() < deadline:  # follow it to its end, resuming after a break
        try:
            await asyncio.wait_for(follow(), deadline - loop.time())
            out.seconds = loop.time() - accepted
            break
        except (grpc.aio.AioRpcError, TimeoutError):
            await asyncio.sleep(1.0)
    with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
        anim = await _call(lambda: client.get(out.job_id), deadline + 60 - loop.time())
        out.status, out.error, out.frames_done = anim.status, anim.error, anim.frames_done


async def _chaos(
    stack: LocalStack, kills: list[Kill], t0: float, done: Counter, outcomes: list[Outcome]
) -> None:
    loop = asyncio.get_running_loop()
    for kill in kills:
        await asyncio.sleep(max(0.0, t0 + kill.at_s - loop.time()))
        server = (
            stack.nats if kill.target == "nats-server" else stack.service(kill.target, kill.replica)
        )
        pid = server.pid
        if pid is None:  # still coming back from an earlier kill
            done[f"{kill.target}:skipped"] += 1
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        done[kill.target] += 1
        # Jobs accepted and not yet over: what the kill may have cut into.
        busy = sum(1 for o in outcomes if o.job_id and not o.seconds)
        done["in flight"] += busy
        done["with jobs in flight"] += busy > 0
        print(
            f"{kill.at_s:6.0f} s  SIGKILL {kill.target} (pid {pid}), {busy} jobs in flight",
            flush=True,
        )


async def _soak(stack: LocalStack, args: argparse.Namespace) -> tuple[list[Outcome], Counter]:
    jobs = plan_jobs(args.jobs, args.minutes, args.seed)
    kills = plan_kills(args.minutes, args.seed)
    outcomes = [Outcome(job) for job in jobs]
    killed: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + (args.minutes + args.drain_minutes) * 60
    async with AnimationClient(stack.planner_target, timeout_s=30) as client:
        runs = [asyncio.create_task(_run_job(client, o, args.seed, t0, deadline)) for o in outcomes]
        chaos = asyncio.create_task(_chaos(stack, kills, t0, killed, outcomes))
        last_report = t0
        while not all(r.done() for r in runs):
            await asyncio.sleep(1.0)
            if loop.time() - last_report >= 30:
                last_report = loop.time()
                ended = sum(1 for o in outcomes if o.status and is_terminal(o.status))
                print(f"{loop.time() - t0:6.0f} s  {ended} of {len(jobs)} jobs ended", flush=True)
            if loop.time() >= t0 + args.minutes * 60 and not chaos.done():
                chaos.cancel()  # every job is submitted: let them finish in peace
        chaos.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chaos
        await asyncio.gather(*runs)
    return outcomes, killed


def _bus_settings(stack: LocalStack):
    return config.load("client", {**stack.env(), **stack.login("bus-init")})


async def _check_frames(stack: LocalStack, outcomes: list[Outcome]) -> None:
    store = S3Store.from_settings(config.load("client", stack.env()))
    async with AnimationClient(stack.planner_target, timeout_s=60) as client:
        for out in outcomes:
            if out.status != types_pb2.JOB_STATUS_COMPLETED:
                continue
            events = [e async for e in client.watch(out.job_id)]
            rendered = [
                (e.frame, e.attempt) for e in events if e.type == bus_pb2.EVENT_TYPE_FRAME_RENDERED
            ]
            prefix = keys.job_prefix(out.job_id) + "frames/"
            stored = await asyncio.to_thread(store.list, prefix)
            shas = {}
            for i in range(out.job.frames):
                with contextlib.suppress(Exception):
                    data = await asyncio.to_thread(store.get, keys.frame_key(out.job_id, i))
                    shas[i] = hashlib.sha256(data).hexdigest()
            try:
                manifest = json.loads(
                    await asyncio.to_thread(store.get, keys.manifest_key(out.job_id))
                )
            except Exception:
                manifest = None
            out.rerendered = len(set(rendered)) - len({f for f, _ in rendered})
            out.problems = frame_problems(
                out.job.frames, rendered, stored, manifest, shas, out.frames_done
            )


async def _check_slots(stack: LocalStack, outcomes: list[Outcome]) -> dict[str, int]:
    """Slots held per client (as a create would count them) against unfinished jobs."""
    conn = await connect(_bus_settings(stack), "bench-soak", first_connect_timeout_s=10)
    try:
        store = await JobStore.open(conn.js)
        states = {}
        for out in outcomes:
            if out.job_id:
                states[out.job_id] = (await store.get(out.job_id))[0]
        unfinished = Counter(
            s.request.client_id for s in states.values() if not is_terminal(s.status)
        )
        held: Counter[str] = Counter()
        now = time.time()
        for client in {o.job.client for o in outcomes}:
            try:
                entry = await store.jobs.get(slot_key(client))
            except Exception:  # no slot record: the client never got a job in
                continue
            for job_id, claimed_at in json.loads(entry.value or b"{}").get("jobs", {}).items():
                state = states.get(job_id)
                if state is None:  # claimed, never created: held for the grace period
                    held[client] += now - claimed_at < SLOT_GRACE_S
                elif not is_terminal(state.status):
                    held[client] += 1
        recount = Counter(_status(s.status) for s in states.values())
        counts = {k: v for k, v in (await store.counts()).items() if v}
        open_ids = sorted(s.job_id for s in await store.open_jobs(tidy=False))
        return {
            "unfinished": sum(unfinished.values()),
            "slots_held": sum(held.values()),
            "slots_leaked": sum(
                max(0, held[c] - unfinished[c]) for c in set(held) | set(unfinished)
            ),
            "slots_missing": sum(
                max(0, unfinished[c] - held[c]) for c in set(held) | set(unfinished)
            ),
            "counters_exact": int(counts == dict(recount)),
            "open_entries_exact": int(
                open_ids == sorted(j for j, s in states.items() if not is_terminal(s.status))
            ),
        }
    finally:
        await conn.close()


async def _replay(env: dict[str, str], runs_dir: Path, sample: list[Outcome], seed: int):
    """The sample's requests again, one after the other, in an undisturbed embedded
    stack: {soak job id: [frame PNG bytes]}."""
    import torch

    from ghibli_anim.embedded import EmbeddedStack

    # Float sums on the CPU depend on how many threads split them: the embedded services
    # (in this process) compute with as many as each service process did.
    torch.set_num_threads(int(env["OMP_NUM_THREADS"]))

    replayed = {}
    outside = {k: v for k, v in os.environ.items() if not k.startswith("ANIM_")}
    async with (
        EmbeddedStack(env={**outside, **env, "ANIM_RUNS_DIR": str(runs_dir)}) as emb,
        AnimationClient(emb.planner_target, timeout_s=60) as client,
    ):
        for out in sample:
            request = out.job.request(seed)
            request.idempotency_key = ""
            job = await client.create(request)
            async for _ in client.watch(job.job_id):
                pass
            folder = runs_dir / job.job_id / "frames"
            replayed[out.job_id] = [
                (folder / f"{i:04d}.png").read_bytes() for i in range(out.job.frames)
            ]
    return replayed


def _processes_in(folder: Path) -> set[int]:
    """Processes whose working directory lies under ``folder`` (every process the stack
    starts runs in its own folder there, and so does anything those start)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                    found.add(int(entry.name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="jobs submitted in all")
    parser.add_argument("--minutes", type=float, default=10.0, help="over how many minutes")
    parser.add_argument("--seed", type=int, default=1, help="draws the jobs and the kills")
    parser.add_argument("--drain-minutes", type=float, default=5.0, help="time to finish after")
    parser.add_argument("--sample", type=int, default=5, help="jobs re-run in embedded mode")
    parser.add_argument("--quick", action="store_true", help="20 jobs over 2 minutes")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.minutes = 20, 2.0
    if args.jobs < 1:
        parser.error(f"--jobs: must be at least 1, got {args.jobs}")
    if args.minutes <= 0 or args.drain_minutes <= 0:
        parser.error("--minutes and --drain-minutes: must be more than 0")
    if args.sample < 0:
        parser.error(f"--sample: must be 0 or more, got {args.sample}")
    if sys.platform != "linux":
        parser.error("the soak reads /proc to find orphans: Linux only")

    before = descendants(os.getpid())
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        env = tiny_cpu_env(work / "cache")
        stack = LocalStack(
            work / "stack",
            env=env,
            replicas={"renderer": RENDERERS},
            nats_auth=True,
            restart_crashed=True,
        )
        print(
            f"soak: {args.jobs} jobs over {args.minutes:g} min, seed {args.seed}, a SIGKILL "
            f"every {KILL_INTERVAL_S[0]:g}-{KILL_INTERVAL_S[1]:g} s of one of "
            f"{', '.join(TARGETS)}; starting the stack...",
            flush=True,
        )
        with stack:
            started = time.monotonic()
            outcomes, killed = asyncio.run(_soak(stack, args))
            soak_s = time.monotonic() - started
            print("checking frames, manifests and the job store...", flush=True)
            asyncio.run(_check_frames(stack, outcomes))
            slots = asyncio.run(_check_slots(stack, outcomes))
            completed = [o for o in outcomes if o.status == types_pb2.JOB_STATUS_COMPLETED]
            sample = random.Random(f"sample-{args.seed}").sample(
                completed, min(args.sample, len(completed))
            )
            store = S3Store.from_settings(config.load("client", stack.env()))
            soaked = {
                o.job_id: [store.get(keys.frame_key(o.job_id, i)) for i in range(o.job.frames)]
                for o in sample
            }
            assert stack.supervisor is not None
            restarts = dict(stack.supervisor.restarts)
            ports = [s.port for _, s in stack.servers()] + [
                p for p in (stack.nats.monitor_port,) if p
            ]
        # Whatever the stack started is gone: below this process, or anywhere, working in
        # the stack's folder; and nothing answers on its ports.
        deadline = time.monotonic() + 5  # a process being killed right now may linger
        while True:
            left = (descendants(os.getpid()) - before) | _processes_in(work / "stack")
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        answering = [p for p in ports if port_answers(p)]

        print(f"re-running {len(sample)} jobs undisturbed in embedded mode...", flush=True)
        replayed = asyncio.run(_replay(env, work / "runs", sample, args.seed)) if sample else {}

    differ = [j for j in soaked if soaked[j] != replayed.get(j)]
    return _report(
        args, outcomes, killed, restarts, slots, left, answering, len(sample), differ, soak_s
    )


def _report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    killed: Counter,
    restarts: dict[str, int],
    slots: dict[str, int],
    left: set[int],
    answering: list[int],
    sampled: int,
    differ: list[str],
    soak_s: float,
) -> int:
    completed = [o for o in outcomes if o.status == types_pb2.JOB_STATUS_COMPLETED]
    failed = [o for o in outcomes if o.status and is_terminal(o.status) and o not in completed]
    unfinished = [o for o in outcomes if o.job_id and not is_terminal(o.status or 0)]
    refused = [o for o in outcomes if not o.job_id]
    bad_frames = [o for o in completed if o.problems]
    frames = sum(o.job.frames for o in completed)
    times = sorted(o.seconds for o in completed) or [0.0]
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print()
    print(f"soak: {soak_s:.0f} s, {len(outcomes)} jobs submitted over {args.minutes:g} min")
    print(
        f"jobs: {len(completed)} completed, {len(failed)} failed, {len(unfinished)} unfinished, "
        f"{len(refused)} not accepted; {sum(o.retries for o in outcomes)} creates sent again "
        f"while the planner did not answer"
    )
    for o in failed + unfinished + refused:
        print(f"  job {o.job.index} {o.job_id or '-'} {_status(o.status)}: {o.error}")
    print(
        f"frames: {frames} in completed jobs; exactly once in {len(completed) - len(bad_frames)} "
        f"of {len(completed)} jobs; {sum(o.rerendered for o in completed)} frames rendered "
        f"more than once (a later attempt after a kill), each stored once"
    )
    print(
        f"job time, created to last event: median {statistics.median(times):.1f} s, "
        f"p95 {p95:.1f} s, max {times[-1]:.1f} s"
    )
    for o in bad_frames:
        print(f"  job {o.job.index} {o.job_id}: {'; '.join(o.problems)}")
    print(f"byte-identical to an undisturbed embedded run: {sampled - len(differ)} of {sampled}")
    for job_id in differ:
        print(f"  job {job_id}: frames differ")
    print(
        f"cap slots: {slots['slots_held']} held for {slots['unfinished']} unfinished jobs "
        f"({slots['slots_leaked']} leaked, {slots['slots_missing']} missing); status counters "
        f"{'exact' if slots['counters_exact'] else 'WRONG'}, unfinished entries "
        f"{'exact' if slots['open_entries_exact'] else 'WRONG'}"
    )
    print(
        f"after stop: {len(left)} process(es) left {sorted(left)}, "
        f"{len(answering)} port(s) answering {answering}"
    )
    print(
        "kills: "
        + ", ".join(f"{t} {killed[t]}" for t in TARGETS)
        + (f" (skipped, still coming back: {sum(v for k, v in killed.items() if ':' in k)})")
        + f"; {killed['with jobs in flight']} with jobs in flight ({killed['in flight']} jobs)"
    )
    print("restarts: " + (", ".join(f"{k} {v}" for k, v in sorted(restarts.items())) or "none"))
    ok = not (failed or unfinished or refused or bad_frames or differ or left or answering) and (
        slots["slots_leaked"] == slots["slots_missing"] == 0
        and slots["counters_exact"]
        and slots["open_entries_exact"]
    )
    print(
        summary_line(
            {
                "jobs": len(outcomes),
                "completed": len(completed),
                "failed": len(failed) + len(unfinished) + len(refused),
                "frames": frames,
                "frames_exactly_once": int(not bad_frames),
                "frames_rerendered": sum(o.rerendered for o in completed),
                "job_p95_s": round(p95, 1),
                "identical": f"{sampled - len(differ)}/{sampled}",
                "orphans": len(left),
                "leaked_slots": slots["slots_leaked"],
                "kills": sum(killed[t] for t in TARGETS),
                "kills_in_flight": killed["with jobs in flight"],
                **{f"kills_{t.replace('-', '_')}": killed[t] for t in TARGETS},
                "restarts": sum(restarts.values()),
                "seconds": round(soak_s),
                "ok": int(ok),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
