"""Device-check helper (not part of the project): variants of the full recipe, for the report."""
import sys, time, torch
from pathlib import Path
from dataclasses import replace
from kdistill import create_model, Distiller, fit
from kdistill.checkpoint import load_weights
from kdistill.engine import predict_logits
from kdistill.reproduce import FULL, _splits, errors
dev = torch.device("cuda")
train, val, test = (s.to(dev) for s in _splits(FULL, None))
mode = sys.argv[1]

def go(name, teacher=None, T=20.0, ep=100, tr=0, alpha=0.9, opt="adam", lr=1e-3, bs=128, wd=0.0):
    torch.manual_seed(0); m = create_model(name).to(dev); t = time.time()
    d = Distiller(m) if teacher is None else Distiller(m, teacher, "hinton", temperature=T, alpha=alpha)
    fit(d, train, epochs=ep, batch_size=bs, lr=lr, seed=0, optimizer=opt, weight_decay=wd,
        schedule="cosine", translate=tr, progress=False)
    e = errors(predict_logits(m, test), test.labels)
    print(f"{name} T={T if teacher is not None else '-'} ep={ep} jitter={tr} alpha={alpha} {opt} lr={lr} wd={wd}: {e} errors, {time.time()-t:.0f}s", flush=True)
    return m

if mode == "teacher":   # another teacher recipe
    go("hinton-teacher", ep=200, tr=2, opt="sgd", lr=0.05)
else:                   # student variants on the full run's teacher
    path = Path(sys.argv[2])
    while not path.exists():
        time.sleep(2)
    time.sleep(2)
    teacher = create_model("hinton-teacher").to(dev)
    load_weights(path, teacher)
    teacher.eval()
    soft = predict_logits(teacher, train)
    go("mlp:784-800-800-10", teacher, tr=2)          # jittered transfer set, live teacher
    go("mlp:784-800-800-10", soft, alpha=0.5)        # more weight on labels
    go("mlp:784-800-800-10", soft, ep=200)           # longer
