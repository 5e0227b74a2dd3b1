"""Device-check helper (not part of the project): variants of the distilled 800-800 student of
`kdistill reproduce hinton-mnist` on the full run's seed-0 teacher (its `teacher.safetensors`
copied to .gpu/), each scored on the 10k validation split (to choose by) and the test set.
Run on one H200 as two processes side by side (`python variants.py abcdefg` and `... hijklmn`),
so the seconds in variants.log are not clean timings; variant o ran later on 2 CPU cores
(`python variants.py o`, falling back to the CPU). Keys: see VARIANTS."""
import sys, time, torch
from pathlib import Path
from kdistill import create_model, Distiller, fit
from kdistill.checkpoint import load_weights
from kdistill.data.augment import Augment
from kdistill.engine import predict_logits, predict_views
from kdistill.reproduce import FULL, _splits, errors
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
train, val, test = (s.to(dev) for s in _splits(FULL, None))
teacher = create_model("hinton-teacher").to(dev)
load_weights(Path(".gpu/teacher.safetensors"), teacher)
teacher.eval()
print("teacher val", errors(predict_logits(teacher, val), val.labels), "test", errors(predict_logits(teacher, test), test.labels), flush=True)
soft = predict_logits(teacher, train)
views = None
VARIANTS = {
 "a": dict(), "b": dict(alpha=1.0), "c": dict(ep=300), "d": dict(alpha=1.0, ep=300),
 "e": dict(lr=3e-4), "f": dict(lr=3e-3), "g": dict(bs=512, lr=3e-3), "h": dict(tr=2, alpha=1.0),
 "i": dict(tr=2, ep=300), "j": dict(loss="mse"), "k": dict(T=4, ep=300), "l": dict(tr=1),
 "m": dict(wd=1e-4, opt="adamw"), "n": dict(ep=300, lr=3e-4),
 "o": dict(opt="sgd", lr=0.01),  # Nesterov momentum 0.9; lr 0.1 diverged (T² scales the step)
}
for key in sys.argv[1]:
    v = dict(T=20.0, ep=100, tr=0, alpha=0.9, lr=1e-3, bs=128, loss="hinton", wd=0.0, opt="adam")
    v.update(VARIANTS[key])
    torch.manual_seed(0); m = create_model("mlp:784-800-800-10").to(dev); t = time.time()
    aug = Augment(v["tr"])
    table = soft if not v["tr"] else predict_views(teacher, train, aug)
    d = Distiller(m, table, v["loss"], temperature=v["T"], alpha=v["alpha"])
    fit(d, train, epochs=v["ep"], batch_size=v["bs"], lr=v["lr"], seed=0, optimizer=v["opt"],
        weight_decay=v["wd"], schedule="cosine", augment=aug, progress=False)
    print(f"{key} {v}: val {errors(predict_logits(m, val), val.labels)} test "
          f"{errors(predict_logits(m, test), test.labels)} errors, {time.time()-t:.0f}s", flush=True)
