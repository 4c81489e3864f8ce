"""Novelty scores petalnet does not ship, beside the ones it does: to choose on, not to report.

Usage (from the repository root; ``pip install -e ".[bench]"`` for the photos)::

    python benchmarks/open_set_explore.py                      # default recipe, selection species
    python benchmarks/open_set_explore.py --preset fast-cpu

Same protocol as ``benchmarks/open_set.py`` (its :func:`~open_set.fit_open_set`), on the
**selection** species by default: a score found better here can then be measured once on
the reported species. Scores, each higher for "less like a known class":

- ``combined``, ``msp``, ``max_logit``: as shipped (:mod:`petalnet.calibration`).
- ``hidden_rmaha``: relative Mahalanobis distance on the head's last hidden layer (the input
  of its final ``Linear``), each row L2-normalised; the Gaussians are fitted on the same
  training rows as the shipped ``rmaha``.
- ``leave_out``: an ensemble of :data:`HEADS` linear heads, each trained on the training rows
  with one fifth of the classes left out and pushed towards a uniform prediction on those
  (outlier exposure with known classes as stand-in outliers; Vyas et al. 2018); the score
  is minus the heads' mean top probability.
- Sums of two or three of them, each standardised on the fit's validation split (the
  hold-out carved from ``train/``; never the reported images), and a confidence score plus
  a down-weighted distance (:data:`WEIGHTS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from datetime import date
from typing import Any

import torch
from _shared import emit, machine
from open_set import HELD_OUT, SELECTION, add_arguments, auroc, fit_open_set
from torch import nn

from petalnet.calibration import fit_gaussians, novelty_scores, sample_rows

HEADS = 5
"""Leave-out heads; each leaves out every fifth class of a fixed permutation."""
WEIGHTS = (0.25, 0.5)
"""Weights of a distance score summed with a confidence score (both standardised)."""
OE_WEIGHT = 0.5
"""Weight of the uniform-prediction loss on the left-out classes (Hendrycks et al. 2019)."""


def hidden(head: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The input of the head's final ``Linear``, L2-normalised (``x`` when it has none)."""
    last = max(i for i, m in enumerate(head) if isinstance(m, nn.Linear))
    head.eval()
    with torch.inference_mode():
        h = head[:last](x.float()) if last else x.float()
    return nn.functional.normalize(h, dim=-1)


def leave_out_heads(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> list[nn.Module]:
    """Train :data:`HEADS` linear heads, each blind to a fifth of the classes."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    perm = torch.randperm(classes, generator=gen)
    mean, std = x.mean(0), x.std(0) + 1e-6
    heads = []
    for k in range(HEADS):
        out = perm[k::HEADS]
        keep = torch.tensor(sorted(set(range(classes)) - set(out.tolist())))
        remap = torch.full((classes,), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        inside, outside = torch.isin(y, keep), torch.isin(y, out)
        xi, yi, xo = (x[inside] - mean) / std, remap[y[inside]], (x[outside] - mean) / std
        linear = nn.Linear(x.shape[1], len(keep))
        model = nn.Sequential(nn.Dropout(0.3), linear)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        for _ in range(30):
            pi, po = torch.randperm(len(xi)), torch.randperm(len(xo))
            for b in range(16):
                bi, bo = pi[b::16], po[b::16]
                loss = nn.functional.cross_entropy(model(xi[bi]), yi[bi])
                loss = loss - OE_WEIGHT * model(xo[bo]).log_softmax(-1).mean()
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        model.eval()
        heads.append(nn.Sequential(_Standardise(mean, std), model))
    return heads


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument("--held_out", choices=["reported", "selection"], default="selection")
    args = ap.parse_args(argv)
    held_out = SELECTION if args.held_out == "selection" else HELD_OUT
    run = fit_open_set(args, held_out, with_valid=True)
    assert run.valid is not None
    model = run.clf.model_
    head, base = model.head, model.calibration
    rows = sample_rows(len(run.train))
    x, y = run.train[rows].float(), run.train_labels[rows]
    start = time.perf_counter()
    heads = leave_out_heads(x, y)
    loe_seconds = time.perf_counter() - start
    gauss = fit_gaussians(hidden(head, x), y)
    groups = {"validation": run.valid, **run.feats}

    def views(f: torch.Tensor) -> torch.Tensor:
        return f.float() if f.ndim == 3 else f.float()[None]

    scores: dict[str, dict[str, torch.Tensor]] = {}
    for g, f in groups.items():
        v = views(f)
        for name in ("combined", "msp", "max_logit", "rmaha"):
            out = dataclasses.replace(base, score=name).outputs(head, v, torch.device("cpu"))
            scores.setdefault(name, {})[g] = out.novelty
        logits = torch.zeros(0)
        scores.setdefault("hidden_rmaha", {})[g] = novelty_scores(
            logits, torch.stack([hidden(head, e) for e in v]), "rmaha", gauss=gauss
        )
        with torch.inference_mode():
            top = [m(v).softmax(-1).amax(-1).mean(0) for m in heads]
        scores.setdefault("leave_out", {})[g] = -torch.stack(top).mean(0)

    def z(name: str) -> dict[str, torch.Tensor]:
        ref = scores[name]["validation"]
        return {g: (s - ref.mean()) / ref.std() for g, s in scores[name].items()}

    singles = list(scores)
    for size in (2, 3):
        for combo in itertools.combinations(singles, size):
            if "combined" in combo and ("msp" in combo or "rmaha" in combo):
                continue  # combined already holds msp and rmaha
            parts = [z(name) for name in combo]
            scores["+".join(combo)] = {g: sum(p[g] for p in parts) for g in groups}  # type: ignore[misc]
    for first, distance in itertools.product(("msp", "max_logit"), ("rmaha", "hidden_rmaha")):
        for weight in WEIGHTS:  # the distance down-weighted against the head's confidence
            a, b = z(first), z(distance)
            scores[f"{first}+{weight}*{distance}"] = {g: a[g] + weight * b[g] for g in groups}
    table = {
        name: {
            g: round(auroc(by_group["known"].numpy(), by_group[g].numpy()), 4)
            for g in ("held_out_species", "non_flower")
        }
        for name, by_group in scores.items()
    }
    for name, row in sorted(table.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{name:40s} species {row['held_out_species']:.3f}  photos {row['non_flower']:.3f}")
    return emit(
        {
            "date": date.today().isoformat(),
            "torch": torch.__version__,
            **machine(),
            "command": " ".join(["python benchmarks/open_set_explore.py", *sys.argv[1:]]),
            "recipe": args.preset or "default (lite0, 10 epochs)",
            "held_out": args.held_out,
            "leave_out_seconds": round(loe_seconds, 1),
            "auroc": table,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
