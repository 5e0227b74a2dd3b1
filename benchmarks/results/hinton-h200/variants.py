"""Helper (not part of the project): one variant of the distilled 800-800 student of
`kdistill reproduce hinton-mnist`, trained on a saved teacher's soft targets and scored on the
10,000-image validation split (to choose by); the test set only with --test.

    python benchmarks/results/hinton-h200/variants.py bs=32 ep=100 --trace 10 [--test]
        [--teacher runs/hinton/seed-0/teacher.safetensors]

Settings (key=value, defaults are the full recipe's): T, ep, tr (student jitter in px; the
teacher then gives logits on every shifted view), alpha, lr, bs, loss, wd, opt, n (train on the
first n of the 50,000 transfer images; above 50,000 the validation images join them, as the
paper used all 60,000, and validation errors then count images trained on), tta (soft targets averaged over the
teacher's views shifted by up to tta px: a better teacher, not the paper's). --trace K prints, every K epochs, the T = 20 soft-target
loss (T²·KL, as trained) on the transfer set and on the validation split, and errors on both:
how well the student fits the teacher where it was taught, and away from it.
The teacher defaults to .gpu/teacher.safetensors, the seed-0 teacher of the H200 full run.
"""
import argparse, json, time
from pathlib import Path
import torch
import torch.nn.functional as F
from kdistill import create_model, Distiller, fit
from kdistill.checkpoint import load_weights
from kdistill.data.augment import Augment
from kdistill.engine import Images, predict_logits, predict_views
from kdistill.reproduce import FULL, _splits, errors

p = argparse.ArgumentParser()
p.add_argument("settings", nargs="*", metavar="key=value")
p.add_argument("--teacher", type=Path, default=Path(".gpu/teacher.safetensors"))
p.add_argument("--trace", type=int, default=0, metavar="K")
p.add_argument("--test", action="store_true", help="also count test errors (report, never choose)")
args = p.parse_args()
v = dict(T=20.0, ep=100, tr=0, alpha=0.9, lr=1e-3, bs=128, loss="hinton", wd=0.0, opt="adam",
         n=50_000, tta=0)
for item in args.settings:
    key, _, text = item.partition("=")
    v[key] = type(v[key])(text)  # KeyError names an unknown setting
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
train, val, test = (s.to(dev) for s in _splits(FULL, None))
teacher = create_model("hinton-teacher").to(dev)
load_weights(args.teacher, teacher)
teacher.eval()
if v["n"] > len(train):  # all 60,000 as in the paper: validation joins the transfer set
    train = Images(torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels]),
                   train.mean, train.std)
train = train.subset(torch.arange(v["n"], device=dev))
if v["tta"]:  # the teacher's logits averaged over its ±tta px shifted views (not the paper)
    soft, soft_val = (predict_views(teacher, x, Augment(v["tta"])).mean(0) for x in (train, val))
else:
    soft, soft_val = predict_logits(teacher, train), predict_logits(teacher, val)
print(f"teacher: val {errors(soft_val, val.labels)} errors", flush=True)
aug = Augment(v["tr"])
table = soft if not v["tr"] else predict_views(teacher, train, aug)


def kd20(student: torch.Tensor, teacher: torch.Tensor) -> float:
    return 400 * F.kl_div((student / 20).log_softmax(1), (teacher / 20).log_softmax(1),
                          log_target=True, reduction="batchmean").item()


torch.manual_seed(0)
m = create_model("mlp:784-800-800-10").to(dev)
start = time.time()


def trace(record: dict) -> None:
    if args.trace and (record["epoch"] % args.trace == 0 or record["epoch"] == v["ep"]):
        m.eval()
        zt, zv = predict_logits(m, train), predict_logits(m, val)
        m.train()
        print(f"  epoch {record['epoch']}: T²·KL(T=20) transfer {kd20(zt, soft):.4f} "
              f"val {kd20(zv, soft_val):.4f}; errors transfer {errors(zt, train.labels)} "
              f"val {errors(zv, val.labels)}; {time.time() - start:.0f}s", flush=True)


fit(Distiller(m, table, v["loss"], temperature=v["T"], alpha=v["alpha"]), train, epochs=v["ep"],
    batch_size=v["bs"], lr=v["lr"], seed=0, optimizer=v["opt"], weight_decay=v["wd"],
    schedule="cosine", augment=aug, progress=False, on_epoch_end=trace)
result = f"val {errors(predict_logits(m, val), val.labels)}"
if args.test:
    result += f" test {errors(predict_logits(m, test), test.labels)}"
print(f"{json.dumps(v)} on {dev.type}: {result} errors, {time.time() - start:.0f}s", flush=True)
