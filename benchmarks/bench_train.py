"""Training throughput: aevb's engine against a plain eager PyTorch loop and a matmul ceiling.

Three contenders train the same model (an MLP VAE: D-H-N_z, Bernoulli on 784 pixels or Gaussian on
560, estimator B unless told, L = 1, the N(0, I) weight prior as weight decay 1/N; ``--depth``
hidden layers of ``--hidden`` units with ``--activation``, one tanh layer unless told) on the same
number of samples:

- ``aevb``: the real training loop of ``aevb train`` (``Trainer.run`` driving the registered
  algorithm's ``step``; for AEVB that is the fast engine of :mod:`aevb.fast` where it applies);
- ``autograd`` (on request, and with ``--modern``): the same loop on the autograd engine
  (``--engine autograd``), so that the fast engine's gain is measured side by side;
- ``plain``: a straightforward eager loop in the style of the official PyTorch VAE example
  (nn.Module, autograd, ``torch.optim.Adagrad`` with default settings, minibatches sliced from a
  tensor), with the same math; for ``--algorithm wake-sleep`` the same loop taking wake-sleep
  steps (wake: -log p(x, z) with z ~ q(z|x) fixed; sleep: -log q(z_d|x_d) on dreams); for
  ``--estimator iwae`` (K = ``--samples``, ``--iwae-gradient``) there is no plain loop: the
  ``autograd`` engine takes its place;
- ``ceiling``: every matrix product of one training step at these shapes (AEVB's, or wake-sleep's
  for ``--algorithm wake-sleep``), back to back into preallocated outputs, plus one fused
  optimizer pass over all the parameters: what a step costs with no elementwise work, no Python
  and no allocation;
- ``ref-aevb`` and ``ref-ceiling`` (added when ``--algorithm`` is not aevb): aevb's AEVB and
  AEVB's ceiling in the same run, so that the algorithm's cost per datapoint is compared with
  AEVB's, and with the ratio of the two steps' matrix products;
- ``aevb-bf16`` and ``ceiling-bf16`` (with ``--bf16``): aevb's step with ``--precision bf16``
  (bf16 products, float32 master weights) and the ceiling with its products in bf16 (plus the two
  casts a float32-master step cannot avoid: the weights to bf16, the gradient to float32, and the
  float32 fused optimizer). On a CPU without bf16 instructions the path is forced and the bf16
  rates say how slow it is there, not what it gains where the instructions exist;
- ``aevb-bf16-emulated`` (through ``--contenders``): aevb's bf16 step with its products emulated
  in float32 kernels (``AEVB_FORCE_CPU_BF16=emulate``), the way bf16 training's accuracy is
  measured on a CPU without bf16 instructions.

Each contender runs in its own worker process (all children of this one), set up once and warmed
up; the parent then interleaves them, one chunk of samples each in turn, several times, and reports
medians. The machine may be shared: interleaving spreads the noise over all contenders, and the
spread (min..max) is printed with each median.

    python benchmarks/bench_train.py                      # the paper's MNIST setting, M=100, N_z=20
    python benchmarks/bench_train.py --quick              # a few seconds
    python benchmarks/bench_train.py --data frey -M 100 --latent 20
    python benchmarks/bench_train.py --table              # docs/PERFORMANCE.md's grid
    python benchmarks/bench_train.py --million            # wall time of 10^6 training samples
    python benchmarks/bench_train.py --breakdown          # where aevb's step goes (profiler)
    python benchmarks/bench_train.py --algorithm wake-sleep --threads 1 --clock cpu
    python benchmarks/bench_train.py --modern --threads 1   # 784-200-200-50 relu, Adam, + autograd
    python benchmarks/bench_train.py --bf16               # + bf16 products and their ceiling
    python benchmarks/bench_train.py --contenders aevb,aevb-bf16,aevb-bf16-emulated --threads 1
    python benchmarks/bench_train.py --modern --estimator iwae --samples 5 --iwae-gradient dreg
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before importing torch: time to first step counts everything

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

SHAPES = {
    # name: (x_dim, hidden, likelihood, n_train) as in the paper (MNIST 784-500, Frey 560-200)
    "mnist": (784, 500, "bernoulli", 50_000),
    "frey": (560, 200, "gaussian", 1_965),
}
CONTENDERS = ("aevb", "plain", "ceiling")
PLAIN_ALGORITHMS = ("aevb", "wake-sleep")  # algorithms with a plain loop
MODERN = (
    *("--data", "mnist", "--latent", "50", "--hidden", "200", "--depth", "2"),
    *("--activation", "relu", "--optimizer", "adam", "--contenders", "aevb,autograd,plain,ceiling"),
)  # docs/REPRODUCTION.md's modern benchmark model, 784-200-200-50, with ReLU


def hidden_units(spec: dict) -> int:
    """Units per hidden layer: --hidden, else the dataset's (the paper's)."""
    return spec.get("hidden") or SHAPES[spec["data"]][1]


# =========================================================================== workers


def _synthetic_data(torch, spec: dict):
    """Training data of the right shape: binary pixels (mean 0.13, like MNIST) or grey levels."""
    d, _, lik, n = SHAPES[spec["data"]]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=g)
    return (x < 0.13).float() if lik == "bernoulli" else x


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class AevbWorker:
    """The real Trainer loop of `aevb train` with the registered algorithm."""

    def __init__(self, torch, spec: dict) -> None:
        from aevb import training
        from aevb.algorithms import ALGORITHMS
        from aevb.model import VAE, ModelConfig

        d, _, lik, _ = SHAPES[spec["data"]]
        h = hidden_units(spec)
        x = _synthetic_data(torch, spec).to(spec["device"])
        tcfg = training.TrainConfig(
            algorithm=spec["algorithm"],
            estimator=spec["estimator"],
            samples=spec["samples"],
            batch_size=spec["M"],
            optimizer=spec["optimizer"],
            lr=0.02 if spec["optimizer"] == "adagrad" else 1e-3,
            engine=spec["engine"],
            budget=10**12,
            precision=spec.get("precision", "float32"),
            iwae_gradient=spec.get("iwae_gradient", "standard"),
        )
        mcfg = ModelConfig(
            x_dim=d,
            latent_dim=spec["latent"],
            hidden=h,
            depth=spec.get("depth", 1),
            activation=spec.get("activation", "tanh"),
            likelihood=lik,
        )
        model = VAE(mcfg)
        model.init_parameters(0.01, torch.Generator().manual_seed(1))
        model = model.to(spec["device"])
        alg = ALGORITHMS[spec["algorithm"]](model, tcfg, len(x), float(tcfg.lr))
        self.engine = alg.engine
        self.trainer = training.Trainer(alg, x, None, tcfg, progress=False, evaluate_points=False)
        self.m = spec["M"]

    def run(self, n_samples: int) -> None:
        t = self.trainer
        t.total = (t.step_count + max(1, n_samples // self.m)) * self.m
        t.run()  # the Trainer reads its running bound back every 20 steps: a real sync


class PlainWorker:
    """A plain eager loop in the style of the official PyTorch VAE example, same math as aevb."""

    def __init__(self, torch, spec: dict) -> None:
        import math

        import torch.nn.functional as F
        from torch import nn

        d, _, lik, n = SHAPES[spec["data"]]
        h, j = hidden_units(spec), spec["latent"]
        L, est = spec["samples"], spec["estimator"]
        gaussian = lik == "gaussian"
        device = spec["device"]
        act = torch.relu if spec.get("activation", "tanh") == "relu" else torch.tanh
        more = spec.get("depth", 1) - 1  # hidden layers past the first, in each network

        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(d, h)
                self.fc1_more = nn.ModuleList(nn.Linear(h, h) for _ in range(more))
                self.fc21 = nn.Linear(h, j)
                self.fc22 = nn.Linear(h, j)
                self.fc3 = nn.Linear(j, h)
                self.fc3_more = nn.ModuleList(nn.Linear(h, h) for _ in range(more))
                self.fc4 = nn.Linear(h, d)
                if gaussian:
                    self.fc5 = nn.Linear(h, d)

            def encode(self, x):
                h1 = act(self.fc1(x))
                for fc in self.fc1_more:
                    h1 = act(fc(h1))
                return self.fc21(h1), self.fc22(h1)

            def reparameterize(self, mu, logvar):
                std = torch.exp(0.5 * logvar)
                eps = torch.randn((L, *std.shape), dtype=std.dtype, device=std.device)
                return mu + eps * std

            def decode(self, z):
                h3 = act(self.fc3(z))
                for fc in self.fc3_more:
                    h3 = act(fc(h3))
                if gaussian:
                    return torch.sigmoid(self.fc4(h3)), self.fc5(h3)
                return (torch.sigmoid(self.fc4(h3)),)

            def forward(self, x):
                mu, logvar = self.encode(x)
                z = self.reparameterize(mu, logvar)
                return self.decode(z), mu, logvar, z

        def loss_function(out, x, mu, logvar, z):
            """Minus the per-datapoint bound, averaged over the minibatch."""
            if gaussian:
                mean, lv = out
                nll = 0.5 * (lv + (x - mean) ** 2 * torch.exp(-lv) + math.log(2 * math.pi)).sum()
            else:
                nll = F.binary_cross_entropy(out[0], x.expand_as(out[0]), reduction="sum")
            nll = nll / L
            if est == "B":
                kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            else:  # A: log q(z|x) - log p(z), averaged over the L samples
                log_q = -0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum() / L
                log_p = -0.5 * (z**2).sum() / L
                kld = log_q - log_p
            return (nll + kld) / x.shape[0]

        def wake_sleep_loss(x):
            """Wake: -log p(x, z), z ~ q(z|x) held fixed; sleep: -log q(z_d|x_d) on dreams."""
            with torch.no_grad():
                mu, logvar = self.model.encode(x)
                z = self.model.reparameterize(mu, logvar)[0]
            out = self.model.decode(z)
            if gaussian:
                mean, lv = out
                nll = 0.5 * (lv + (x - mean) ** 2 * torch.exp(-lv) + math.log(2 * math.pi)).sum()
            else:
                nll = F.binary_cross_entropy(out[0], x, reduction="sum")
            wake = nll + 0.5 * (z**2).sum()  # -log p(z) up to a constant
            with torch.no_grad():  # dreams: z_d ~ p(z), x_d ~ p(x|z_d)
                z_d = torch.randn_like(z)
                out_d = self.model.decode(z_d)
                if gaussian:
                    noise = torch.randn_like(out_d[0])
                    x_d = out_d[0] + torch.exp(0.5 * out_d[1]) * noise
                else:
                    x_d = torch.bernoulli(out_d[0])
            mu_d, lv_d = self.model.encode(x_d)
            sleep = 0.5 * (lv_d + (z_d - mu_d) ** 2 * torch.exp(-lv_d)).sum()
            return (wake + sleep) / x.shape[0]

        torch.manual_seed(0)
        self.model = VAE().to(device)
        with torch.no_grad():
            for p in self.model.parameters():
                p.normal_(0, 0.01)
        opt = torch.optim.Adagrad if spec["optimizer"] == "adagrad" else torch.optim.Adam
        lr = 0.02 if spec["optimizer"] == "adagrad" else 1e-3
        self.optimizer = opt(self.model.parameters(), lr=lr, weight_decay=1.0 / n)
        self.loss_function = loss_function
        self.wake_sleep = spec["algorithm"] == "wake-sleep"
        if self.wake_sleep and L != 1:
            raise SystemExit("bench_train: wake-sleep draws one z per datapoint (--samples 1)")
        self.wake_sleep_loss = wake_sleep_loss
        self.x = _synthetic_data(torch, spec).to(device)
        self.m = spec["M"]
        self.pos = 0
        self.perm = torch.randperm(len(self.x), device=device)
        self.train_loss = 0.0
        self.torch = torch

    def run(self, n_samples: int) -> None:
        torch, m = self.torch, self.m
        self.model.train()
        for _ in range(max(1, n_samples // m)):
            if self.pos + m > len(self.x):
                self.perm = torch.randperm(len(self.x), device=self.x.device)
                self.pos = 0
            data = self.x[self.perm[self.pos : self.pos + m]]
            self.pos += m
            self.optimizer.zero_grad()
            if self.wake_sleep:
                loss = self.wake_sleep_loss(data)
            else:
                out, mu, logvar, z = self.model(data)
                loss = self.loss_function(out, data, mu, logvar, z)
            loss.backward()
            self.train_loss += loss.item()
            self.optimizer.step()


class CeilingWorker:
    """Every matrix product of one training step back to back, plus one fused optimizer pass."""

    def __init__(self, torch, spec: dict) -> None:
        d, _, lik, n = SHAPES[spec["data"]]
        h, j, m, L = hidden_units(spec), spec["latent"], spec["M"], spec["samples"]
        nd = 2 * d if lik == "gaussian" else d
        kw = {"device": spec["device"], "dtype": torch.float32}
        bf16 = spec.get("precision") == "bf16"
        kp = {**kw, "dtype": torch.bfloat16} if bf16 else kw  # the products' operands

        def r(*s):
            return torch.randn(*s, **kp) * 0.01

        ws = spec["algorithm"] == "wake-sleep"
        x, z = torch.rand(m, d, **kp), r(L * m, j)
        zz, hh, oo = r(2 * m, j), r(2 * m, h), r(2 * m, nd)  # wake-sleep: [z; z_d] decoded at once
        W1, We, Wd1, Wd2 = r(h, d), r(2 * j, h), r(h, j), r(nd, h)
        h1, e, h2, o = r(m, h), r(m, 2 * j), r(L * m, h), r(L * m, nd)
        gh2, gz, gh1 = r(L * m, h), r(L * m, j), r(m, h)
        gW1, gWe, gWd1, gWd2 = r(h, d), r(2 * j, h), r(h, j), r(nd, h)
        more = spec.get("depth", 1) - 1  # hidden-to-hidden layers in each network
        n_params = h * d + h + 2 * j * h + 2 * j + h * j + h + nd * h + nd + 2 * more * (h * h + h)
        flat, grad, acc = (torch.zeros(n_params, **kw) for _ in range(3))  # float32 masters
        flat_m, grad_m = (r(n_params), r(n_params)) if bf16 else (flat, grad)
        mm = torch.mm

        def deeper(rows: int):
            """The hidden-to-hidden layers of one network on `rows` rows: forward (one product
            each) and backward (weight gradient and input gradient)."""
            Ws, gWs = [r(h, h) for _ in range(more)], [r(h, h) for _ in range(more)]
            a, b = r(rows, h), r(rows, h)

            def forward():
                for W in Ws:
                    mm(a, W.t(), out=b)

            def backward():
                for W, gW in zip(Ws, gWs, strict=True):
                    mm(b.t(), a, out=gW)
                    mm(b, W, out=a)

            return forward, backward

        enc_fwd, enc_bwd = deeper(m)
        dec_fwd, dec_bwd = deeper(L * m)
        dec2_fwd, _ = deeper(2 * m)  # wake-sleep: the decoder on [z; z_d]
        step = torch.zeros((), device=spec["device"])
        if spec["optimizer"] == "adagrad":

            def update():
                if bf16:  # the gradient to float32, the updated weights back to bf16
                    grad.copy_(grad_m)
                step.add_(1)
                torch._fused_adagrad_(
                    [flat], [grad], [acc], [step], lr=0.02, lr_decay=0.0,
                    weight_decay=1.0 / n, eps=1e-10, maximize=False,
                )  # fmt: skip
                if bf16:
                    flat_m.copy_(flat)
        else:
            acc2 = torch.zeros(n_params, **kw)

            def update():
                if bf16:
                    grad.copy_(grad_m)
                step.add_(1)
                torch._fused_adam_(
                    [flat], [grad], [acc], [acc2], [], [step], lr=1e-3, beta1=0.9,
                    beta2=0.999, weight_decay=1.0 / n, eps=1e-8, amsgrad=False, maximize=False,
                )  # fmt: skip
                if bf16:
                    flat_m.copy_(flat)

        def wake_sleep_step():
            mm(x, W1.t(), out=h1)  # wake: encoder forward
            enc_fwd()
            mm(h1, We.t(), out=e)
            mm(zz, Wd1.t(), out=hh)  # decoder forward on the wake and the dream latents
            dec2_fwd()
            mm(hh, Wd2.t(), out=oo)
            mm(o.t(), h2, out=gWd2)  # wake: decoder backward (no gradient to z)
            mm(o, Wd2, out=gh2)
            dec_bwd()
            mm(gh2.t(), z, out=gWd1)
            mm(x, W1.t(), out=h1)  # sleep: encoder forward on the dreams, and backward
            enc_fwd()
            mm(h1, We.t(), out=e)
            mm(e.t(), h1, out=gWe)
            mm(e, We, out=gh1)
            enc_bwd()
            mm(gh1.t(), x, out=gW1)
            update()

        def one_step():
            mm(x, W1.t(), out=h1)  # encoder hidden
            enc_fwd()  # (depth > 1) the encoder's further hidden layers
            mm(h1, We.t(), out=e)  # encoder heads
            mm(z, Wd1.t(), out=h2)  # decoder hidden
            dec_fwd()
            mm(h2, Wd2.t(), out=o)  # decoder heads
            mm(o.t(), h2, out=gWd2)  # backward: weight gradients and input gradients
            mm(o, Wd2, out=gh2)
            dec_bwd()
            mm(gh2.t(), z, out=gWd1)
            mm(gh2, Wd1, out=gz)
            mm(e.t(), h1, out=gWe)
            mm(e, We, out=gh1)
            enc_bwd()
            mm(gh1.t(), x, out=gW1)
            update()

        self.one_step, self.m = (wake_sleep_step if ws else one_step), m
        self.sync = torch.cuda.synchronize if spec["device"].startswith("cuda") else lambda: None

    def run(self, n_samples: int) -> None:
        for _ in range(max(1, n_samples // self.m)):
            self.one_step()
        self.sync()


WORKERS = {
    "aevb": AevbWorker,
    "autograd": lambda torch, spec: AevbWorker(torch, {**spec, "engine": "autograd"}),
    "plain": PlainWorker,
    "ceiling": CeilingWorker,
    "ref-aevb": lambda torch, spec: AevbWorker(torch, {**spec, "algorithm": "aevb"}),
    "ref-ceiling": lambda torch, spec: CeilingWorker(torch, {**spec, "algorithm": "aevb"}),
    "aevb-bf16": lambda torch, spec: AevbWorker(torch, {**spec, "precision": "bf16"}),
    "ceiling-bf16": lambda torch, spec: CeilingWorker(torch, {**spec, "precision": "bf16"}),
    "aevb-bf16-emulated": lambda torch, spec: _emulated(AevbWorker, torch, spec),
}


def _emulated(worker, torch, spec: dict):
    """aevb's bf16 step with its products emulated in float32 kernels (AEVB_FORCE_CPU_BF16=
    emulate, this worker process only; a CPU with bf16 instructions runs them instead)."""
    from aevb import hardware

    os.environ[hardware.FORCE_ENV] = hardware.EMULATE
    return worker(torch, {**spec, "precision": "bf16"})


def worker_main(name: str, spec: dict) -> None:
    """Serve `run N` requests on stdin; answer one JSON line each on stdout."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    t_import = time.perf_counter() - T_START
    w = WORKERS[name](torch, spec)
    w.run(spec["M"])  # the first training step
    sync = torch.cuda.synchronize if spec["device"].startswith("cuda") else (lambda: None)
    sync()
    first = time.perf_counter() - T_START
    w.run(spec["warmup"])
    sync()
    clock = time.process_time if spec["clock"] == "cpu" else time.perf_counter
    info = {
        "ready": True,
        "import_s": round(t_import, 3),
        "first_step_s": round(first, 3),
        "engine": getattr(w, "engine", None),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        faults = _minor_faults()
        t = clock()
        w.run(n)
        sync()
        dt = clock() - t
        samples = max(1, n // spec["M"]) * spec["M"]
        print(
            json.dumps(
                {
                    "seconds": dt,
                    "samples": samples,
                    "faults_per_step": (_minor_faults() - faults) / max(1, n // spec["M"]),
                }
            ),
            flush=True,
        )
    print(json.dumps({"peak_rss_mb": round(_peak_rss_mb(), 1)}), flush=True)


# =========================================================================== the parent


class Worker:
    def __init__(self, name: str, spec: dict) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", name, "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info: dict = {}
        self.rates: list[float] = []
        self.faults: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(
                f"bench_train: the {self.name} worker died (exit {self.proc.returncode})"
            )
        return json.loads(line)

    def wait_ready(self) -> None:
        self.info = self._read()

    def measure(self, n: int) -> None:
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        r = self._read()
        self.rates.append(r["samples"] / r["seconds"])
        self.faults.append(r["faults_per_step"])

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.info.update(self._read())
        self.proc.wait()


def _allow_bf16(device: str) -> None:
    """Let the workers run bf16 on a CPU without bf16 instructions (saying so): its rates there
    measure the emulated path, which ``aevb train`` refuses to run."""
    from aevb import hardware

    if device == "cpu" and not hardware.bf16_instructions():
        os.environ[hardware.FORCE_ENV] = "1"  # inherited by the worker processes


def check_device(device: str) -> None:
    """Fail with one clear line when CUDA is asked for and absent (before starting workers)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "bench_train: --device cuda was asked for but this PyTorch sees no CUDA GPU; "
                "use --device cpu"
            )


def bench(spec: dict, reps: int, chunk: int, contenders=CONTENDERS) -> dict:
    """Run the contenders side by side (interleaved chunks); medians and spreads per contender."""
    workers = []
    for name in contenders:  # one at a time, so that start-ups and warm-ups do not compete
        workers.append(Worker(name, spec))
        workers[-1].wait_ready()
    for r in range(reps):
        order = workers[r % len(workers) :] + workers[: r % len(workers)]
        for w in order:
            w.measure(chunk)
    for w in workers:
        w.close()
    out = {}
    for w in workers:
        out[w.name] = {
            "median": statistics.median(w.rates),
            "min": min(w.rates),
            "max": max(w.rates),
            "faults_per_step": statistics.median(w.faults),
            "rates": w.rates,
            **w.info,
        }
    return out


def describe(spec: dict) -> str:
    d, _, lik, n = SHAPES[spec["data"]]
    hidden = "-".join([str(hidden_units(spec))] * spec.get("depth", 1))
    return (
        f"{spec['data']} shapes ({d}-{hidden}-{spec['latent']} {lik}, "
        f"{spec.get('activation', 'tanh')}, N={n}), M={spec['M']}, "
        f"{'K' if spec['estimator'] == 'iwae' else 'L'}={spec['samples']}, estimator "
        f"{spec['estimator']}{' (dreg)' if spec.get('iwae_gradient') == 'dreg' else ''}, "
        f"{spec['optimizer']}, "
        f"algorithm {spec['algorithm']}, device {spec['device']}, "
        f"threads {spec['threads'] or 'default'}, {spec['clock']} clock"
    )


def report(spec: dict, res: dict, reps: int, chunk: int) -> None:
    from aevb.hardware import describe_cpu

    print(f"\n{describe(spec)}; {reps} interleaved chunks of {chunk:,} samples each")
    print(f"CPU: {describe_cpu()}")
    plain = res.get("plain", {}).get("median")
    ceil = res.get("ceiling", {}).get("median")
    print(
        f"{'contender':<10} {'samples/s (median)':>18} {'min..max':>17} {'x plain':>8} "
        f"{'% ceiling':>9} {'faults/step':>11} {'first step':>10} {'peak RSS':>9}"
    )
    for name, r in res.items():
        own = not name.startswith("ref-")  # AEVB's rows: no ratios to another algorithm's loops
        ratio = f"{r['median'] / plain:.2f}" if plain and own else "-"
        pct = f"{100 * r['median'] / ceil:.0f}%" if ceil and own else "-"
        label = name + (f" [{r['engine']}]" if r.get("engine") else "")
        print(
            f"{label:<17} {r['median']:>11,.0f} {r['min']:>8,.0f}..{r['max']:<8,.0f} {ratio:>8} "
            f"{pct:>9} {r['faults_per_step']:>11.0f} {r['first_step_s']:>9.2f}s "
            f"{r['peak_rss_mb']:>7.0f}MB"
        )
    rounds = per_round(res)
    if rounds:
        print(
            "per round (the contenders ran back to back, so a slow spell of the machine hits "
            f"them alike): aevb / plain {rounds['aevb/plain']:.2f}x, aevb / ceiling "
            f"{100 * rounds['aevb/ceiling']:.0f}%, ceiling / plain {rounds['ceiling/plain']:.2f}x "
            "(the most a step bounded by the ceiling can gain on the plain loop)"
        )
    bf16_ratios(res)
    if "autograd" in res and "aevb" in res:
        a, g = res["aevb"]["rates"], res["autograd"]["rates"]
        print(
            f"aevb's engine / the autograd engine, per round: "
            f"{statistics.median(x / y for x, y in zip(a, g, strict=True)):.2f}x"
        )
    if "ref-aevb" in res and "aevb" in res:
        a, ref = res["aevb"], res["ref-aevb"]
        per_chunk = statistics.median(
            x / y for x, y in zip(ref["rates"], a["rates"], strict=True)
        )  # the two ran side by side in each round
        print(
            f"{spec['algorithm']}'s cost per datapoint = {ref['median'] / a['median']:.2f}x "
            f"AEVB's ({a['median']:,.0f} against {ref['median']:,.0f} samples/s, medians; "
            f"per round {per_chunk:.2f}x)"
        )
    if "ref-ceiling" in res and "ceiling" in res:
        c, ref = res["ceiling"], res["ref-ceiling"]
        print(
            f"  its matrix products alone: {ref['median'] / c['median']:.2f}x AEVB's "
            f"(ceilings {c['median']:,.0f} against {ref['median']:,.0f} samples/s)"
        )


def bf16_ratios(res: dict) -> None:
    """With --bf16: the bf16 step against aevb's float32 step and against the bf16 ceiling."""
    from aevb import hardware

    if not any(k in res for k in ("aevb-bf16", "aevb-bf16-emulated")):
        return
    pairs = (
        ("aevb-bf16", "aevb", "aevb bf16 / aevb's float32 step"),
        ("aevb-bf16", "ceiling-bf16", "aevb bf16 / the bf16 ceiling"),
        ("aevb-bf16-emulated", "aevb", "aevb bf16 emulated / aevb's float32 step"),
    )
    for one, other, what in pairs:
        if one in res and other in res:
            rates = zip(res[one]["rates"], res[other]["rates"], strict=True)
            print(f"{what}, per round: {statistics.median(x / y for x, y in rates):.2f}x")
    found = hardware.bf16_instructions()
    print(
        f"bf16 instructions: {', '.join(found)}"
        if found
        else "this CPU has no bf16 instructions: the bf16 path was forced (torch's bf16 kernels "
        "convert to float32 and back without them)"
    )


def per_round(res: dict) -> dict[str, float]:
    """Medians over the rounds of the ratios of aevb, plain and ceiling measured in that round."""
    if not all(k in res for k in CONTENDERS):
        return {}
    a, p, c = (res[k]["rates"] for k in CONTENDERS)
    return {
        "aevb/plain": statistics.median(x / y for x, y in zip(a, p, strict=True)),
        "aevb/ceiling": statistics.median(x / y for x, y in zip(a, c, strict=True)),
        "ceiling/plain": statistics.median(x / y for x, y in zip(c, p, strict=True)),
    }


def table(args, base: dict) -> None:
    """docs/PERFORMANCE.md's grid: M in {100, 1000} x N_z in {3, 20, 200}."""
    rows = []
    for m in (100, 1000):
        for j in (3, 20, 200):
            spec = {**base, "M": m, "latent": j, "warmup": max(base["warmup"], 2 * m)}
            chunk = max(args.chunk, 10 * m)
            res = bench(spec, args.reps, chunk)
            report(spec, res, args.reps, chunk)
            rows.append((m, j, res))
    d, h, lik, _ = SHAPES[base["data"]]
    print(
        f"\nMarkdown ({base['data']} shapes {d}-{h}-N_z, {lik}; medians of {args.reps} chunks):\n"
    )
    print(
        "| M | N_z | aevb samples/s | plain samples/s | ceiling samples/s "
        "| aevb / plain | aevb / ceiling | ceiling / plain | aevb peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m, j, r in rows:
        a, p, c = r["aevb"]["median"], r["plain"]["median"], r["ceiling"]["median"]
        q = per_round(r)
        print(
            f"| {m} | {j} | {a:,.0f} | {p:,.0f} | {c:,.0f} | {q['aevb/plain']:.2f}x "
            f"| {100 * q['aevb/ceiling']:.0f}% | {q['ceiling/plain']:.2f}x "
            f"| {r['aevb']['peak_rss_mb']:.0f} MB |"
        )
    print("\n(samples/s: medians over the chunks; ratios: medians over the rounds of the ratios)")


def _in_fresh_process(code: str, spec: dict) -> dict:
    """Run ``code`` (it reads ``spec`` as JSON on stdin) in a new interpreter that imports this
    script; its last line of output is JSON, returned."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(spec), env=env, text=True,
        capture_output=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


PRODUCTS = ("aten::addmm", "aten::addmm_", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmv")
BREAKDOWN_CODE = (
    "import json, sys; sys.argv=['x']; import bench_train as b\n"
    "print(json.dumps(b.breakdown_worker(json.loads(sys.stdin.read()))))\n"
)


def breakdown_worker(spec: dict, rounds: int = 3) -> dict:
    """aevb's step against the ceiling's (median wall time of ``rounds`` interleaved chunks),
    then one profiled chunk of aevb's split into the products, the optimizer and the other
    operators; what is left of the step is the time between operators (Python, dispatch)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    aevb, ceiling = AevbWorker(torch, spec), CeilingWorker(torch, spec)
    n = max(spec["chunk"], spec["M"])
    steps = n // spec["M"]
    aevb.run(spec["warmup"])
    ceiling.run(spec["warmup"])
    walls: dict[str, list[float]] = {"aevb": [], "ceiling": []}
    for _ in range(rounds):
        for name, w in (("aevb", aevb), ("ceiling", ceiling)):
            t = time.perf_counter()
            w.run(n)
            walls[name].append((time.perf_counter() - t) / steps * 1e6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        aevb.run(n)
    parts = {"products": 0.0, "optimizer": 0.0}
    others: dict[str, float] = {}
    for e in prof.key_averages():
        us = e.self_cpu_time_total / steps
        kind = "products" if e.key in PRODUCTS else "optimizer" if "_fused_ada" in e.key else None
        if kind:
            parts[kind] += us
        else:
            others[e.key] = us
    return {
        "step_us": statistics.median(walls["aevb"]),
        "ceiling_step_us": statistics.median(walls["ceiling"]),
        **{f"{k}_us": v for k, v in parts.items()},
        "other_ops_us": sum(others.values()),
        "top_other_ops": sorted(others.items(), key=lambda kv: -kv[1])[:8],
        "ops_per_step": sum(e.count for e in prof.key_averages()) / steps,
    }


def breakdown(spec: dict) -> None:
    """Print where aevb's step goes (``breakdown_worker`` in a fresh process)."""
    from aevb.hardware import describe_cpu

    r = _in_fresh_process(BREAKDOWN_CODE, spec)
    step, ceil = r["step_us"], r["ceiling_step_us"]
    between = step - r["products_us"] - r["optimizer_us"] - r["other_ops_us"]
    top = ", ".join(f"{k.removeprefix('aten::')} {v:.0f}" for k, v in r["top_other_ops"])
    print(f"\nWhere aevb's step goes, {describe(spec)}")
    print(f"CPU: {describe_cpu()}")
    share = f"ceiling's step {ceil:.0f} us: aevb at {ceil / step:.0%}"
    print(f"  step            {step:8.0f} us  ({share})")
    print(f"  products        {r['products_us']:8.0f} us")
    print(f"  optimizer       {r['optimizer_us']:8.0f} us")
    print(f"  other operators {r['other_ops_us']:8.0f} us  ({top})")
    print(
        f"  between them    {between:8.0f} us  (Python, dispatch, the Trainer loop: the step "
        f"less the profiled operators; {r['ops_per_step']:.0f} operator calls a step)"
    )
    print(
        "  (operators: torch.profiler self time of one chunk; the profiler's own cost is in them)"
    )


def million(spec: dict) -> None:
    """Wall time of 10^6 training samples through the real Trainer loop (one process)."""
    code = (
        "import time, json, sys; sys.argv=['x']; import bench_train as b; import torch\n"
        "spec=json.loads(sys.stdin.read())\n"
        "torch.set_num_threads(spec['threads']) if spec['threads'] else None\n"
        "t0=time.perf_counter(); c0=time.process_time(); w=b.AevbWorker(torch, spec)\n"
        "w.run(spec['M']); t1=time.perf_counter()\n"
        "w.run(1_000_000 - spec['M']); t2=time.perf_counter(); c2=time.process_time()\n"
        "print(json.dumps({'setup_and_first_step_s': t1-t0, 'million_s': t2-t0,"
        " 'million_cpu_s': c2-c0,"
        " 'engine': w.engine, 'steps': w.trainer.step_count,"
        " 'peak_rss_mb': b._peak_rss_mb()}))\n"
    )
    r = _in_fresh_process(code, spec)
    print(f"\n10^6 training samples, {describe(spec)}:")
    print(
        f"  {r['million_s']:.1f} s wall, {r['million_cpu_s']:.1f} s CPU "
        f"({r['steps']} steps, engine {r['engine']}; set-up and "
        f"first step {r['setup_and_first_step_s']:.2f} s; peak RSS {r['peak_rss_mb']:.0f} MB)"
    )


def main(argv=None) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is a file
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", choices=sorted(SHAPES), default="mnist", help="dataset shapes")
    ap.add_argument("-M", "--batch-size", type=int, default=100, dest="M")
    ap.add_argument("--latent", type=int, default=20, help="N_z")
    ap.add_argument("--hidden", type=int, default=0, help="units per hidden layer (0: the data's)")
    ap.add_argument("--depth", type=int, default=1, help="hidden layers per network (>= 1)")
    ap.add_argument("--activation", choices=("tanh", "relu"), default="tanh")
    ap.add_argument(
        "--modern",
        action="store_true",
        help="the modern benchmark's model: " + " ".join(MODERN) + " (later flags override)",
    )
    ap.add_argument("--samples", type=int, default=1, help="L, samples per datapoint")
    ap.add_argument("--estimator", choices=("A", "B", "iwae"), default="B")
    ap.add_argument("--iwae-gradient", choices=("standard", "dreg"), default="standard")
    ap.add_argument("--optimizer", choices=("adagrad", "adam"), default="adagrad")
    ap.add_argument("--algorithm", default="aevb", help="registered algorithm for the aevb side")
    ap.add_argument("--engine", choices=("auto", "fast", "autograd"), default="auto")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (the target); cpu: the worker's CPU time, steadier on a busy "
        "machine with --threads 1",
    )
    ap.add_argument("--reps", type=int, default=5, help="interleaved chunks per contender")
    ap.add_argument("--chunk", type=int, default=30_000, help="samples per chunk")
    ap.add_argument("--warmup", type=int, default=5_000, help="samples before measuring")
    ap.add_argument("--quick", action="store_true", help="few, short chunks (a smoke test)")
    ap.add_argument("--table", action="store_true", help="the M x N_z grid of PERFORMANCE.md")
    ap.add_argument(
        "--million", action="store_true", help="time 10^6 samples end to end (no comparison)"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="where aevb's step goes beside the ceiling's: products, optimizer, other "
        "operators, the time between them (torch.profiler; no comparison)",
    )
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    ap.add_argument(
        "--bf16", action="store_true", help="add aevb-bf16 and ceiling-bf16 to the contenders"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.modern:  # the preset first, so that flags given explicitly override it
        args = ap.parse_args([*MODERN, *(sys.argv[1:] if argv is None else argv)])
    if args.depth < 1:
        ap.error("--depth takes a number of hidden layers >= 1")
    if args.worker:
        worker_main(args.worker, json.loads(args.spec))
        return
    check_device(args.device)
    if args.quick:
        args.reps, args.chunk, args.warmup = 3, 3_000, 1_000
    spec = {
        "data": args.data,
        "M": args.M,
        "latent": args.latent,
        "hidden": args.hidden,
        "depth": args.depth,
        "activation": args.activation,
        "samples": args.samples,
        "estimator": args.estimator,
        "iwae_gradient": args.iwae_gradient,
        "optimizer": args.optimizer,
        "algorithm": args.algorithm,
        "engine": args.engine,
        "device": args.device,
        "threads": args.threads,
        "warmup": max(args.warmup, 2 * args.M),
        "clock": args.clock,
    }
    contenders = tuple(c for c in args.contenders.split(",") if c)
    if args.bf16:
        contenders += tuple(c for c in ("aevb-bf16", "ceiling-bf16") if c not in contenders)
    if any(c.endswith("-bf16") for c in contenders):
        _allow_bf16(args.device)
    if any(c not in WORKERS for c in contenders):
        ap.error(f"--contenders takes a subset of {','.join(WORKERS)}")
    if args.estimator == "iwae" and "plain" in contenders:
        print("(no plain loop for iwae: comparing with the autograd engine and the ceiling)")
        contenders = tuple(c for c in contenders if c != "plain")
        contenders += () if "autograd" in contenders else ("autograd",)
    if args.algorithm not in PLAIN_ALGORITHMS and "plain" in contenders:
        print(f"(no plain loop for {args.algorithm}: comparing with the ceiling only)")
        contenders = tuple(c for c in contenders if c != "plain")
    if args.algorithm != "aevb" and "aevb" in contenders and "ref-aevb" not in contenders:
        contenders += ("ref-aevb",)  # the algorithm's cost per datapoint against AEVB's
        if "ceiling" in contenders:
            contenders += ("ref-ceiling",)
    if args.million:
        million(spec)
    elif args.breakdown:
        breakdown({**spec, "chunk": max(args.chunk, args.M)})
    elif args.table:
        table(args, spec)
    else:
        chunk = max(args.chunk, args.M)
        report(spec, bench(spec, args.reps, chunk, contenders), args.reps, chunk)


if __name__ == "__main__":
    main()
