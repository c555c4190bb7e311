"""Does an adversarial stage distil? A known gap that one stage must close (issue 18).

    .venv/bin/python bench/bench_adversarial.py                        # every arm, 2 seeds, the pass verdict
    .venv/bin/python bench/bench_adversarial.py --sabotage detach_fake # the G loss sees a detached fake
    .venv/bin/python bench/bench_adversarial.py --sabotage skip_d_step # D's optimizer never steps
    .venv/bin/python bench/bench_adversarial.py --seeds 1 --json s1.jsonl   # one process per seed, then:
    .venv/bin/python bench/bench_adversarial.py --merge s0.jsonl s1.jsonl   # the table and the verdict

Setup: a tiny random SD1.5-layout base, 4 frames at 32 px (4x4 latents), fixed random latent clips. The
student is a random motion module S0; the teacher is S0 with every temporal transformer's output
projection scaled by (1 + g), a visible difference the student can learn exactly (g = 0: teacher = S0,
the control). One adversarial stage on the 4-step grid with one teacher step per student step (n = 1),
through the trainer's own pieces: trainer.distill's plans, teacher solve, student jump and adversarial
losses (the functions train.py's G and D phases call), the trainer's Discriminator built from the teacher
as train.py builds it (its logit layer starts at zero), Adam with the adversarial betas (0, 0.99), 300 steps.
Why n = 1: with n = 2 (8 -> 4) the g = 0 control is no null, because eps varies
along the path of a random net (measured: target-to-jump gap 0.118 at g = 0 vs 0.409 at g = 1, 29%), so a
working G + D would rightly move the student at g = 0; with n = 1 the g = 0 target is the jump itself.

Arms, each over seeds 0 and 1 (seed = S0, D's head, clips, noise): `d_only` (the student frozen, only D
steps), `g_and_d` (the trainer's G phase then D phase), `mse` (the same steps with the MSE loss, the
reference), at g in {0, 0.5, 1}. Measured on 64 held-out (x0, noise, start t):
  d_acc, real_logit, fake_logit  D's accuracy and mean logits on teacher targets (real) vs student jumps (fake)
  gap_closed   1 - rms(fake - real) / rms(fake_0 - real): the fraction of the output gap the stage closed
  moved        rms(fake - fake_0) / rms(fake_0 - real at g = 1): how far the student's outputs moved, in units
               of the g = 1 gap (the control's measure: at g = 0 there is no gap to close)
  param_dist   ||theta_student - theta_teacher|| / ||theta_S0 - theta_teacher|| (1.0 = not moved toward it)
Pass (issue 18): D alone at g = 1 has accuracy >= 0.8, at g = 0 <= 0.6, rising with g; G + D at g = 1 closes
>= 20% of the gap for both seeds, and at g = 0 moves < 5%.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lightning_core import losses  # noqa: E402
from lightning_core.motion_module import MotionModuleSet  # noqa: E402
from trainer import distill  # noqa: E402
from trainer.discriminator import Discriminator  # noqa: E402
from trainer.train import adversarial_schedule  # noqa: E402
from trainer.sd15 import load_base_model, tiny_motion_config, write_tiny_base_model  # noqa: E402

FRAMES, SIZE = 4, 32
TEACHER_STEPS, STUDENT_STEPS = 4, 4
TRAIN_CLIPS, HELD_OUT = 8, 64
GAPS = (0.0, 0.5, 1.0)
SEEDS = (0, 1)
ARMS = ("d_only", "g_and_d", "mse")
SABOTAGES = ("detach_fake", "skip_d_step")
PROMPTS = ["a red circle moving right", "a blue square falling", "a green star spinning", "two dots bouncing"]


@dataclass
class Recipe:
    steps: int = 300
    batch: int = 8
    g_lr: float = 1e-4
    d_lr: float = 3e-4
    mse_lr: float = 1e-4
    betas: tuple = (0.0, 0.99)
    g_betas: tuple | None = None  # the student's Adam betas when they differ from D's
    discriminator: str = "conditional"
    d_warmup_steps: int = 0
    d_steps_per_g_step: int = 1


def scaled_teacher(student: MotionModuleSet, g: float) -> MotionModuleSet:
    """S0 with every temporal transformer's output projection (weight and bias) scaled by 1 + g, frozen."""
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if ".proj_out." in name:
                p.mul_(1.0 + g)
    return teacher


@torch.no_grad()
def parameter_distance(a: MotionModuleSet, b: MotionModuleSet) -> float:
    return float(sum((p - q).double().square().sum() for p, q in zip(a.parameters(), b.parameters())).sqrt())


class Problem:
    """One seed's fixed pieces: base, S0, clips, prompts' embeddings, a held-out set with its plans."""

    def __init__(self, base, seed: int):
        self.base, self.seed = base, seed
        self.unet = base.unet
        self.alpha_bar = distill.alpha_bar_table("cpu")
        gen = torch.Generator().manual_seed(1000 + seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.s0 = MotionModuleSet(tiny_motion_config(base.config)).requires_grad_(False).eval()
        latent = SIZE // 8
        self.clips = torch.randn(TRAIN_CLIPS, FRAMES, 4, latent, latent, generator=gen)
        self.contexts = base.encode_prompts(PROMPTS).float()
        self.held_out = self.draw(HELD_OUT, torch.Generator().manual_seed(50_000 + seed), fresh_clips=True)

    def draw(self, batch: int, gen: torch.Generator, fresh_clips: bool = False):
        """(x_t, plan, context, flow) for `batch` samples: clips (fresh ones for the held-out set), noise, start t."""
        if fresh_clips:
            x0 = torch.randn(batch, *self.clips.shape[1:], generator=gen)
        else:
            x0 = self.clips[torch.randint(len(self.clips), (batch,), generator=gen)]
        context = self.contexts[torch.randint(len(self.contexts), (batch,), generator=gen)]
        u0 = distill.sample_start(batch, STUDENT_STEPS, [], gen)
        plan = distill.plan_timesteps(u0, TEACHER_STEPS, STUDENT_STEPS)
        noise = torch.randn(x0.shape, generator=gen)
        x_t = distill.add_noise(x0, noise, plan[:, 0], self.alpha_bar)
        return x_t, plan, context, torch.zeros(batch, dtype=torch.long)

    def target(self, teacher, sample):
        x_t, plan, context, _ = sample
        return distill.teacher_solve(self.unet, teacher, x_t, plan, context, None, 1.0, self.alpha_bar)

    @torch.no_grad()
    def jump(self, student, sample):
        x_t, plan, context, _ = sample
        return distill.student_jump(self.unet, student, x_t, plan, context, self.alpha_bar)


def build_discriminator(problem: Problem, teacher: MotionModuleSet, conditional: bool) -> Discriminator:
    """D as train.py builds it: a copy of the base UNet and the teacher's motion module, a seeded head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(problem.seed * 1000 + 7)
        latent = SIZE // 8 // 2 ** (len(problem.base.config.channel_mult) - 1)
        return Discriminator(problem.unet, teacher, 1, conditional, (FRAMES, latent, latent))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def _sabotaged(sabotage: str | None):
    """The two breakages the test must catch, applied to the trainer's own functions for one run."""
    if sabotage == "detach_fake":
        jump = distill.student_jump

        def detached_jump(*args, **kwargs):
            return jump(*args, **kwargs).detach()
        return _patched(distill, "student_jump", detached_jump)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def run_arm(problem: Problem, arm: str, g: float, recipe: Recipe, sabotage: str | None = None) -> dict:
    """Trains one arm for recipe.steps steps and returns its held-out metrics."""
    teacher = scaled_teacher(problem.s0, g)
    unit_teacher = scaled_teacher(problem.s0, 1.0)
    student = copy.deepcopy(problem.s0).requires_grad_(arm != "d_only").train()
    held = problem.held_out
    real, fake_0 = problem.target(teacher, held), problem.jump(problem.s0, held)
    unit_gap = _rms(fake_0 - problem.target(unit_teacher, held))
    d = opt_d = None
    opt_g = (torch.optim.Adam(student.parameters(), lr=recipe.mse_lr if arm == "mse" else recipe.g_lr,
                              betas=(0.9, 0.999) if arm == "mse" else recipe.g_betas or recipe.betas)
             if arm != "d_only" else None)
    if arm != "mse":
        d = build_discriminator(problem, teacher, recipe.discriminator == "conditional")
        opt_d = torch.optim.Adam(d.parameters(), lr=recipe.d_lr, betas=recipe.betas)
    gen = torch.Generator().manual_seed(10_000 + problem.seed)
    with _sabotaged(sabotage):
        for step in range(recipe.steps):
            sample = problem.draw(recipe.batch, gen)
            x_t, plan, context, flow = sample
            target = problem.target(teacher, sample)
            if arm == "mse":
                fake = distill.student_jump(problem.unet, student, x_t, plan, context, problem.alpha_bar)
                losses.mse_distillation_loss(fake, target).backward()
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                continue
            t_d, d_noise = plan[:, -1], None
            student_learns, d_steps = adversarial_schedule(recipe, step, adversarial=True)
            if opt_g is not None and student_learns:  # G phase: D frozen
                d.requires_grad_(False)
                loss = distill.adversarial_generator_loss(problem.unet, student, d, x_t, plan, context, flow, t_d,
                                                          d_noise, problem.alpha_bar)
                if loss.requires_grad:  # a detached fake leaves nothing to differentiate
                    loss.backward()
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                d.requires_grad_(True)
            for k in range(d_steps):
                if k > 0:  # further D steps on fresh samples, as train_step draws them
                    sample = problem.draw(recipe.batch, gen)
                    x_t, plan, context, flow = sample
                    target, t_d = problem.target(teacher, sample), plan[:, -1]
                real_logits, fake_logits = distill.adversarial_discriminator_logits(
                    problem.unet, student, d, x_t, plan, context, flow, target, t_d, d_noise, problem.alpha_bar)
                losses.discriminator_loss(real_logits, fake_logits).backward()
                if sabotage != "skip_d_step":
                    opt_d.step()
                opt_d.zero_grad(set_to_none=True)
            if opt_g is not None:
                opt_g.zero_grad(set_to_none=True)

    fake = problem.jump(student, held)
    out = {"arm": arm, "g": g, "seed": problem.seed,
           "gap_closed": 1.0 - _rms(fake - real) / _rms(fake_0 - real) if g > 0 else float("nan"),
           "moved": _rms(fake - fake_0) / unit_gap,
           "param_dist": (parameter_distance(student, teacher) / parameter_distance(problem.s0, teacher)
                          if g > 0 else parameter_distance(student, problem.s0) /
                          parameter_distance(problem.s0, unit_teacher))}
    if d is not None:
        with torch.no_grad():
            x_t, plan, context, flow = held
            real_logits, fake_logits = distill.adversarial_discriminator_logits(
                problem.unet, student, d, x_t, plan, context, flow, real, plan[:, -1], None, problem.alpha_bar)
        out.update(d_acc=float(losses.discriminator_accuracy(real_logits, fake_logits)),
                   real_logit=float(real_logits.mean()), fake_logit=float(fake_logits.mean()))
    return out


def run_all(base_path: str, recipe: Recipe, seeds=SEEDS, gaps=GAPS, arms=ARMS, sabotage: str | None = None,
            log=print) -> list[dict]:
    base = load_base_model(base_path)
    results = []
    for seed in seeds:
        problem = Problem(base, seed)
        for arm in arms:
            for g in gaps:
                t0 = time.perf_counter()
                results.append(run_arm(problem, arm, g, recipe, sabotage) | {"seconds": time.perf_counter() - t0})
                log(json.dumps(results[-1]))
    return results


def verdict(results: list[dict]) -> list[str]:
    """The issue's pass criteria; returns the failures (empty: pass)."""
    failures = []
    pick = {(r["arm"], r["g"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    missing = [key for key in ((arm, g, seed) for arm in ("d_only", "g_and_d") for g in GAPS for seed in seeds)
               if key not in pick]
    if missing:
        return [f"no result for (arm, g, seed) {key}" for key in missing]
    for seed in seeds:
        acc = [pick[("d_only", g, seed)]["d_acc"] for g in GAPS]
        if acc[-1] < 0.8:
            failures.append(f"seed {seed}: D alone at g = 1 has accuracy {acc[-1]:.3f} < 0.8")
        if acc[0] > 0.6:
            failures.append(f"seed {seed}: D alone at g = 0 has accuracy {acc[0]:.3f} > 0.6")
        if not (acc[0] <= acc[1] <= acc[2] and acc[0] < acc[2]):
            failures.append(f"seed {seed}: D's accuracy does not rise with g: {acc}")
        closed = pick[("g_and_d", 1.0, seed)]["gap_closed"]
        if not closed >= 0.2:
            failures.append(f"seed {seed}: G + D at g = 1 closes {closed:.3f} < 0.2 of the gap")
        moved = pick[("g_and_d", 0.0, seed)]["moved"]
        if not moved < 0.05:
            failures.append(f"seed {seed}: G + D at g = 0 moves {moved:.3f} >= 0.05 of the g = 1 gap")
    return failures


def table(results: list[dict]) -> str:
    rows = ["| arm | g | seed | D acc | real logit | fake logit | gap closed | moved | param dist | s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(k):
            v = r.get(k)
            return "-" if v is None or v != v else f"{v:.3f}"
        rows.append(f"| {r['arm']} | {r['g']} | {r['seed']} | {f('d_acc')} | {f('real_logit')} | {f('fake_logit')} | "
                    f"{f('gap_closed')} | {f('moved')} | {f('param_dist')} | {r['seconds']:.1f} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sabotage", choices=SABOTAGES)
    parser.add_argument("--discriminator", choices=("conditional", "unconditional"), default="conditional")
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    parser.add_argument("--g-lr", type=float, default=Recipe.g_lr)
    parser.add_argument("--d-lr", type=float, default=Recipe.d_lr)
    parser.add_argument("--d-warmup-steps", type=int, default=Recipe.d_warmup_steps)
    parser.add_argument("--d-steps-per-g-step", type=int, default=Recipe.d_steps_per_g_step)
    parser.add_argument("--g-betas", type=float, nargs=2, help="the student's Adam betas (default: D's, 0 0.99)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--gaps", type=float, nargs="+", default=list(GAPS))
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--threads", type=int, default=1, help="tiny tensors: one thread is about as fast as two")
    parser.add_argument("--json", help="write every arm's metrics here (JSONL)")
    parser.add_argument("--merge", nargs="+", metavar="JSONL", help="no training: the table and verdict of earlier "
                        "--json files (e.g. one process per seed)")
    args = parser.parse_args()
    if args.merge:
        results = [json.loads(line) for path in args.merge for line in Path(path).read_text().splitlines() if line]
        print(table(results))
        failures = verdict(results)
        print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
        return 0 if not failures else 1
    torch.set_num_threads(args.threads)
    recipe = Recipe(steps=args.steps, g_lr=args.g_lr, d_lr=args.d_lr, discriminator=args.discriminator,
                    d_warmup_steps=args.d_warmup_steps, d_steps_per_g_step=args.d_steps_per_g_step,
                    g_betas=tuple(args.g_betas) if args.g_betas else None)
    print(f"recipe: {recipe}, sabotage: {args.sabotage}")
    with tempfile.TemporaryDirectory() as tmp:
        base_path = write_tiny_base_model(Path(tmp) / "tiny_base.safetensors", seed=0)
        results = run_all(str(base_path), recipe, args.seeds, args.gaps, args.arms, sabotage=args.sabotage)
    print(table(results))
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in results))
    failures = verdict(results)
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
