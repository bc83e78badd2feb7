"""Prototype: does the synthetic multi-view set show the KD gain? (raw PyTorch, no Lightning, CPU-sized)

Per seed (the seed drives both the generated set and the networks): generate the set with
kd_lightning.data.synthetic, train a teacher with cross-entropy, then the same student architecture twice from the
same initialisation and batch order: with KD (docs/method.md §5: alpha CE + beta T^2 KL, T 4, alpha 0.1, beta 0.9) and
alone (CE). SGD (momentum 0.9, weight decay 5e-4, lr 0.05, cosine), batch 128. Reports test accuracy overall, on
single-view images (those that show one feature of their class) and on the rest, and wall and CPU seconds.
Training batches are built exactly as SyntheticDataModule builds them for augment="noise" / "none".

    .venv/bin/python experiments/prototypes/synthetic_kd.py --seeds 0 1 2            # the recommended demo recipe

Measured (2-core shared machine, torch.set_num_threads(1) because other processes kept the load at 5-9; 1,000 test
images; defaults unless stated: 20 classes x 4 features, 3,000 train images, feature_prob 0.5, max_foreign 2,
noise_std 0.5, resnet20 -> resnet8, 20 epochs each, teacher augment "noise", students augment "none"):

    setting                                  seed  teacher  KD    alone  gain  gain single-view  train CPU s
    16x16, foreign_strength 0.5 (defaults)    0     91.2    88.4  81.1   +7.3   +9.9             131
                                              1     92.6    90.0  85.3   +4.7   +7.5             128
                                              2     89.9    86.8  84.6   +2.2   +4.0             150
    32x32, foreign_strength 0.5 (defaults)    0     97.7    96.0  91.3   +4.7   +8.4             507
    16x16, fs 0.5, students augment "noise"   0     91.2    91.8  89.4   +2.4   +5.3             131
    16x16, foreign_strength 0.3               0     97.2    95.0  91.3   +3.7   +5.9
                                              1     96.6    95.3  92.1   +3.2   +5.9
                                              2     96.0    93.7  92.3   +1.4   +2.4             134
    16x16, fs 0.3, teacher augment "none"     0     89.7    93.8  91.3   +2.5   +2.8
    16x16, fs 0.3, 2,000 images, 15 epochs    0/1   82/84   73/73 73/72  +0.0/+1.0 (under-trained)
    16x16, fs 0.3, 2,000 images, 15 ep, b64   0/1   91/91   90/89 86/89  +3.6/+0.0
    16x16, fs 0.3, 12 epochs, batch 64        0     95.2    93.8  93.1   +0.7   -0.6              85
    16x16, fs 0.3, patch 4 (1/4 of the side)  0     47-56: resnet20 memorised the train set instead of learning

The "train CPU s" column is the CPU time of the three trainings (teacher ~45%, KD student ~33%, student alone ~20%).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.data.synthetic import SyntheticDataModule


class TinyCNN(nn.Module):
    """A small conv net (conv-BN-ReLU x `depth` per stage, 3 stages, global average pool): a fallback backbone."""

    def __init__(self, num_classes: int, width: int = 16, depth: int = 1, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def build(name: str, num_classes: int) -> nn.Module:
    """`tinycnn[W]x[D]` (e.g. tinycnn8x1) or any kd_lightning.models name (resnet8, resnet20, ...)."""
    if name.startswith("tinycnn"):
        width, depth = (name[len("tinycnn"):] or "16x1").split("x")
        return TinyCNN(num_classes, int(width), int(depth))
    from kd_lightning.models import create_model

    return create_model(name, num_classes)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch (docs/method.md §5)."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return temperature**2 * F.kl_div(log_p_s, p_t, reduction="batchmean")


def train(model, dm, augment: str, args, epochs: int, teacher=None, tag: str = "") -> float:
    """SGD + cosine schedule; with `teacher`, the KD objective. Returns (wall seconds, CPU seconds of this process).

    Batches are built as SyntheticDataModule's train_transform builds them: augment "noise" = clean image + fresh
    noise, "none" = the stored image; then normalised with the module's mean/std.
    """
    split = dm.generate()["train"]
    images = split.clean if augment == "noise" else split.noisy
    labels = split.labels
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=False)
    steps_per_epoch = len(labels) // args.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    start, cpu_start = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels))
        for step in range(steps_per_epoch):
            idx = order[step * args.batch:(step + 1) * args.batch]
            x = images[idx]
            if augment == "noise":
                x = x + dm.spec.noise_std * torch.randn_like(x)
            x = dm.normalize(x)
            y = labels[idx]
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = args.alpha * F.cross_entropy(logits, y) + args.beta * kd_loss(logits, t_logits, args.T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if args.verbose:
            acc = evaluate(model, dm)["acc"]
            print(f"  {tag} epoch {epoch + 1}: loss {loss.item():.3f} test {acc:.1f}", flush=True)
    return time.perf_counter() - start, time.process_time() - cpu_start


@torch.no_grad()
def evaluate(model, dm, split: str = "test") -> dict:
    was_training = model.training
    model.eval()
    data = dm.test_set if split == "test" else dm.generate()["train"]  # train: the stored (noisy) images
    images = data.images if split == "test" else data.noisy
    pred = torch.cat([model(dm.eval_transform(x)).argmax(1) for x in images.split(500)])
    model.train(was_training)
    correct = (pred == data.labels).float()
    single = data.shown.sum(1) == 1
    return {"acc": round(100 * correct.mean().item(), 2), "acc_single": round(100 * correct[single].mean().item(), 2),
            "acc_multi": round(100 * correct[~single].mean().item(), 2)}


def run_seed(seed: int, args) -> dict:
    t0 = time.perf_counter()
    dm = SyntheticDataModule(
        num_classes=args.num_classes, features_per_class=args.features, train_size=args.train_size,
        val_size=10, test_size=args.test_size, image_size=args.image_size, patch_size=args.patch_size,
        feature_prob=args.feature_prob, max_foreign=args.max_foreign, foreign_strength=args.foreign_strength,
        noise_std=args.noise_std, seed=seed,
    )
    dm.setup("fit")
    gen_s = time.perf_counter() - t0

    torch.manual_seed(seed)
    teacher = build(args.teacher, args.num_classes)
    t_teacher, cpu_teacher = train(teacher, dm, args.teacher_augment, args, args.teacher_epochs,
                      tag="teacher")
    teacher.eval()
    out = {"seed": seed, "gen_s": round(gen_s, 2), "teacher": evaluate(teacher, dm),
           "teacher_train_acc": evaluate(teacher, dm, "train")["acc"], "teacher_s": round(t_teacher, 1),
           "teacher_cpu_s": round(cpu_teacher, 1)}

    torch.manual_seed(1000 + seed)
    init = build(args.student, args.num_classes).state_dict()
    for mode in ("kd", "alone"):
        student = build(args.student, args.num_classes)
        student.load_state_dict(init)  # both students start from the same weights
        torch.manual_seed(2000 + seed)  # and see the same batch order and noise
        secs, cpu = train(student, dm, args.augment, args, args.student_epochs,
                          teacher if mode == "kd" else None, tag=mode)
        out[mode] = evaluate(student, dm)
        out[f"{mode}_train_acc"] = evaluate(student, dm, "train")["acc"]
        out[f"{mode}_s"] = round(secs, 1)
        out[f"{mode}_cpu_s"] = round(cpu, 1)
    out["gain"] = round(out["kd"]["acc"] - out["alone"]["acc"], 2)
    out["gain_single"] = round(out["kd"]["acc_single"] - out["alone"]["acc_single"], 2)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["total_cpu_s"] = round(cpu_teacher + out["kd_cpu_s"] + out["alone_cpu_s"], 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-classes", type=int, default=20)
    p.add_argument("--features", type=int, default=4)
    p.add_argument("--train-size", type=int, default=3000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=16, help="16: the demo size (the datamodule defaults to 32)")
    p.add_argument("--patch-size", type=int, default=None)
    p.add_argument("--feature-prob", type=float, default=0.5)
    p.add_argument("--max-foreign", type=int, default=2)
    p.add_argument("--foreign-strength", type=float, default=0.5)
    p.add_argument("--noise-std", type=float, default=0.5)
    p.add_argument("--augment", choices=["noise", "none"], default="none", help="the students' training views")
    p.add_argument("--teacher-augment", choices=["noise", "none"], default="noise")
    p.add_argument("--teacher", default="resnet20")
    p.add_argument("--student", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--student-epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--beta", type=float, default=0.9)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="test accuracy after every epoch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({k: v for k, v in vars(args).items()}))
    results = []
    for seed in args.seeds:
        r = run_seed(seed, args)
        results.append(r)
        print(json.dumps(r), flush=True)
    fmt = lambda xs: f"{statistics.mean(xs):.2f} +- {statistics.pstdev(xs):.2f}"  # noqa: E731
    print("teacher", fmt([r["teacher"]["acc"] for r in results]),
          "| kd", fmt([r["kd"]["acc"] for r in results]), "| alone", fmt([r["alone"]["acc"] for r in results]),
          "| gain", fmt([r["gain"] for r in results]), "| gain single-view", fmt([r["gain_single"] for r in results]),
          "| wall s/seed", fmt([r["total_s"] for r in results]),
          "| training CPU s/seed", fmt([r["total_cpu_s"] for r in results]))


if __name__ == "__main__":
    main()
