"""One adapter per library: the same workload written the way a user of that library writes it.

Every "train" adapter has the same interface:
  reset()          parameters back to the shared init, fresh optimiser state, data cursor to 0
  run(n)           n training steps over the cycled batches; returns when the work is done
  trajectory(k)    reset(), then k steps recording the loss of each step (computed before its update)
  params()         the parameters as numpy arrays, in the order [W1, b1, W2, b2, ...]
Imports are inside the classes: a worker process imports only its own library.
"""

from __future__ import annotations

import threading

import numpy as np


def _flip_kernel(p):
    """A conv weight (out, in, kh, kw) or (out, in, k) reversed along its spatial axes, anything else as it is. The shared
    init is for fluxrs' `Conv`, a true convolution as Flux's; PyTorch and JAX cross-correlate, so they
    get the flipped kernel (the same model) and give it back flipped for the check."""
    if p.ndim == 4:
        return np.ascontiguousarray(p[:, :, ::-1, ::-1])
    return np.ascontiguousarray(p[:, :, ::-1]) if p.ndim == 3 else p


# ----------------------------------------------------------------------------------------- fluxrs


# The ways a fluxrs user feeds data and writes the loop (rows of the seed workloads and of (f)).
FEEDS = ("tensors", "numpy", "loader")
LOOPS = ("train", "custom", "jit")


class FluxrsTrain:
    """``fx.train_(lambda m, x, y: loss(m(x), y), model, data, opt_state)``, as the seeds write it;
    with ``compile=True`` ("fluxrs-compiled": the step recorded once and replayed from Rust).

    `feed`: the batches as fx tensors converted once ("tensors"), as the numpy arrays they are
    ("numpy"), or from an ``fx.DataLoader`` over numpy arrays ("loader"). `loop`: ``train_``
    ("train"), or the explicit Training page's custom loop, ``g = fx.gradient(lambda m: loss(m(x), y),
    model)[0]; fx.update_(opt, model, g)`` ("custom"), the same with the loss wrapped in
    ``fx.jit`` ("jit")."""

    def __init__(self, spec, data, init, compile=False, feed="tensors", loop="train"):
        import fluxrs as fx
        if feed not in FEEDS or loop not in LOOPS:
            raise ValueError(f"feed must be one of {FEEDS} and loop one of {LOOPS}, got {feed!r}, {loop!r}")
        self.fx = fx
        self.compile = compile
        self.feed, self.loop = feed, loop
        if spec.get("arch") == "gru":
            gru, dense = fx.GRU(spec["n_in"], spec["hidden"]), fx.Dense(spec["hidden"], spec["n_out"])
            self.model = fx.Chain(gru, lambda y: y[:, -1], dense)  # the class from the last step's output
            self.tensors = [gru.cell.Wi, gru.cell.Wh, gru.cell.bias, dense.weight, dense.bias]
        elif spec.get("arch") == "cnn1d":
            convs = [fx.Conv((k,), (i, o), fx.relu, stride=st, pad=pd) for i, o, k, st, pd in spec["convs1d"]]
            dense = [fx.Dense(i, o) for i, o, _ in spec["layers"]]
            self.model = fx.Chain(*convs, fx.flatten, *dense)
            self.tensors = [t for layer in convs + dense for t in (layer.weight, layer.bias)]
        elif spec.get("arch") == "lenet5":
            # the model zoo's LeNet-5, as a Flux user writes it (fx.Conv flips its kernel, as Flux's does)
            convs = [fx.Conv((k, k), (i, o), fx.relu) for i, o, k in spec["convs"]]
            dense = [fx.Dense(i, o, fx.relu) if a else fx.Dense(i, o) for i, o, a in spec["layers"]]
            self.model = fx.Chain(convs[0], fx.MaxPool((2, 2)), convs[1], fx.MaxPool((2, 2)), fx.flatten, *dense)
            self.tensors = [t for layer in convs + dense for t in (layer.weight, layer.bias)]
        else:
            acts = {"sigmoid": fx.sigmoid, "relu": fx.relu}
            dense = [fx.Dense(i, o, acts[a]) if a else fx.Dense(i, o) for i, o, a in spec["layers"]]
            self.model = fx.Chain(*dense, *([fx.softmax] if spec["head"] == "softmax" else []))
            self.tensors = [t for d in dense for t in (d.weight, d.bias)]
        lossf = {"mse": fx.mse, "logitcrossentropy": fx.logitcrossentropy}[spec["loss"]]
        self.lossf = lossf
        self.objective = lambda m, x, y: lossf(m(x), y)
        kind, lr = spec["opt"]
        self.rule = fx.Descent(lr) if kind == "descent" else fx.Adam(lr)
        if feed == "tensors":
            self.batches = [(fx.tensor(x), fx.tensor(y)) for x, y, _ in data]
        else:
            self.batches = [(x, y) for x, y, _ in data]
        if feed == "loader":  # one dataset, the batches in order: a DataLoader over a window of it slices them
            self.xs, self.ys = (np.ascontiguousarray(np.concatenate(a)) for a in zip(*self.batches))
        self.jitted = fx.jit(self.objective)
        self.init = init
        self.reset()

    def reset(self):
        for t, p in zip(self.tensors, self.init):
            t.assign_(p)
        self.opt = self.fx.setup(self.rule, self.model)
        self.cursor = 0

    def _take(self, n):
        nb = len(self.batches)
        out = [self.batches[(self.cursor + i) % nb] for i in range(n)]
        self.cursor = (self.cursor + n) % nb
        return out

    def _loaders(self, n):
        """DataLoaders giving the next `n` batches: one per run of batches that does not wrap
        around the end of the dataset (numpy views of it, sliced as the loader iterates)."""
        nb, bs = len(self.batches), len(self.batches[0][0])
        while n > 0:
            k = min(n, nb - self.cursor)
            lo, hi = self.cursor * bs, (self.cursor + k) * bs
            yield self.fx.DataLoader((self.xs[lo:hi], self.ys[lo:hi]), batchsize=bs)
            self.cursor = (self.cursor + k) % nb
            n -= k

    def run(self, n):
        if self.loop == "train" and self.feed == "loader":
            for loader in self._loaders(n):
                self.fx.train_(self.objective, self.model, loader, self.opt, compile=self.compile)
            return
        data = [b for loader in self._loaders(n) for b in loader] if self.feed == "loader" else self._take(n)
        if self.loop == "train":
            self.fx.train_(self.objective, self.model, data, self.opt, compile=self.compile)
            return
        fx, model, opt = self.fx, self.model, self.opt
        loss = self.jitted if self.loop == "jit" else self.objective
        for x, y in data:
            g = fx.gradient(lambda m: loss(m, x, y), model)[0]
            fx.update_(opt, model, g)

    def trajectory(self, k):
        self.reset()
        seen = []
        if self.compile:
            # a compiled step runs the loss function only when it records: take each step's
            # loss from the batch-end hook instead
            class Losses:
                @self.fx.hookimpl
                def on_batch_end(self, step, loss):
                    seen.append(loss)

            self.fx.train_(self.objective, self.model, self._take(k), self.opt, compile=True, callbacks=[Losses()])
            return [float(v) for v in seen]
        lossf = self.lossf

        def recorded(m, x, y):
            val = lossf(m(x), y)
            seen.append(val)
            return val

        if self.loop == "train" and self.feed == "loader":
            for loader in self._loaders(k):
                self.fx.train_(recorded, self.model, loader, self.opt)
        elif self.loop == "train":
            self.fx.train_(recorded, self.model, self._take(k), self.opt)
        else:
            fx, model, opt = self.fx, self.model, self.opt
            for x, y in self._take(k):
                val, grads = fx.withgradient(lambda m: recorded(m, x, y), model)
                fx.update_(opt, model, grads[0])
        return [float(np.asarray(v)) for v in seen]

    def params(self):
        return [np.array(t, dtype=np.float32) for t in self.tensors]


class FluxrsThreads:
    """(f): `nthreads` Python threads, each training its own seed model with ``fx.train_``."""

    def __init__(self, spec, data, init, nthreads, compile=False, feed="tensors", loop="train"):
        self.trainers = [FluxrsTrain(spec, data, init, compile, feed, loop) for _ in range(nthreads)]
        self.streams = nthreads

    def reset(self):
        for t in self.trainers:
            t.reset()

    def _parallel(self, fn):
        if len(self.trainers) == 1:
            return [fn(self.trainers[0])]
        results = [None] * len(self.trainers)
        errors = []

        def body(i, t):
            try:
                results[i] = fn(t)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=body, args=(i, t)) for i, t in enumerate(self.trainers)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        return results

    def run(self, n):
        self._parallel(lambda t: t.run(n))

    def trajectory(self, k):
        """Every thread's trajectory (they train identical models on identical data, concurrently)."""
        return self._parallel(lambda t: t.trajectory(k))

    def params(self):
        return self.trainers[0].params()


class FluxrsSgemm:
    def __init__(self, spec, a, b):
        import fluxrs as fx
        self.a, self.b = fx.tensor(a), fx.tensor(b)

    def run(self, n):
        for _ in range(n):
            c = self.a @ self.b
        return c

    def result(self):
        return np.asarray(self.run(1), dtype=np.float32)


# ------------------------------------------------------------------------------------------ torch


class TorchTrain:
    """The usual eager PyTorch loop: zero_grad, forward, loss, backward, step."""

    def __init__(self, spec, data, init):
        import torch
        import torch.nn.functional as F
        from torch import nn
        self.torch = torch
        if spec.get("arch") == "gru":
            self._build_gru(spec, data)
            self.spec, self.init = spec, init
            self.reset()
            return
        mods = []
        for i, o, k in spec.get("convs", []):  # LeNet-5
            mods += [nn.Conv2d(i, o, k), nn.ReLU(), nn.MaxPool2d(2)]
        for i, o, k, st, pd in spec.get("convs1d", []):  # the MNIST-1D CNN
            mods += [nn.Conv1d(i, o, k, stride=st, padding=pd), nn.ReLU()]
        if "convs" in spec or "convs1d" in spec:
            mods.append(nn.Flatten())
        for i, o, a in spec["layers"]:
            mods.append(nn.Linear(i, o))
            if a == "sigmoid":
                mods.append(nn.Sigmoid())
            elif a == "relu":
                mods.append(nn.ReLU())
        if spec["head"] == "softmax":
            mods.append(nn.Softmax(dim=1))
        self.model = nn.Sequential(*mods)
        self.tensors = [p for m in mods if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for p in (m.weight, m.bias)]
        if spec["loss"] == "mse":
            self.lossf = F.mse_loss
            self.batches = [(torch.from_numpy(x.copy()), torch.from_numpy(y.copy())) for x, y, _ in data]
        else:  # logitcrossentropy with one-hot targets == cross_entropy with class indices (mean over batch)
            self.lossf = F.cross_entropy
            self.batches = [(torch.from_numpy(x.copy()), torch.from_numpy(lab.copy())) for x, _, lab in data]
        self.spec = spec
        self.init = init
        self.reset()

    def _build_gru(self, spec, data):
        torch = self.torch
        import torch.nn.functional as F
        from torch import nn

        class GRUClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.gru = nn.GRU(spec["n_in"], spec["hidden"], batch_first=True)
                self.fc = nn.Linear(spec["hidden"], spec["n_out"])

            def forward(self, x):
                out, _ = self.gru(x)
                return self.fc(out[:, -1])

        self.model = GRUClassifier()
        g = self.model.gru
        # PyTorch's GRU has Flux's gates (r, z, n) and formula, with a second bias b_hn inside r ⊙ (W_hn h + b_hn):
        # held at zero (not trained), it is the same model as Flux's single-bias GRU.
        with torch.no_grad():
            g.bias_hh_l0.zero_()
        g.bias_hh_l0.requires_grad_(False)
        self.tensors = [g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, self.model.fc.weight, self.model.fc.bias]
        self.lossf = F.cross_entropy
        self.batches = [(torch.from_numpy(x.copy()), torch.from_numpy(lab.copy())) for x, _, lab in data]

    def reset(self):
        torch = self.torch
        with torch.no_grad():
            for t, p in zip(self.tensors, self.init):
                t.copy_(torch.from_numpy(_flip_kernel(p)))
        kind, lr = self.spec["opt"]
        ps = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(ps, lr=lr) if kind == "descent" else torch.optim.Adam(ps, lr=lr)
        self.cursor = 0

    def _steps(self, n, record=None):
        model, opt, lossf, batches = self.model, self.opt, self.lossf, self.batches
        nb = len(batches)
        for i in range(n):
            x, y = batches[(self.cursor + i) % nb]
            opt.zero_grad()
            loss = lossf(model(x), y)
            loss.backward()
            opt.step()
            if record is not None:
                record.append(loss.item())
        self.cursor = (self.cursor + n) % nb

    def run(self, n):
        self._steps(n)

    def trajectory(self, k):
        self.reset()
        seen = []
        self._steps(k, seen)
        return seen

    def params(self):
        return [_flip_kernel(p.detach().numpy().astype(np.float32)) for p in self.tensors]


class TorchSgemm:
    def __init__(self, spec, a, b):
        import torch
        self.torch = torch
        self.a, self.b = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())

    def run(self, n):
        for _ in range(n):
            c = self.torch.mm(self.a, self.b)
        return c

    def result(self):
        return self.run(1).numpy()


# -------------------------------------------------------------------------------------------- jax


class JaxTrain:
    """A ``jax.jit``-compiled train step (value_and_grad + optax), called once per batch from Python."""

    def __init__(self, spec, data, init):
        import jax
        import jax.numpy as jnp
        import optax
        self.jax = jax
        layers, head = spec.get("layers"), spec.get("head")

        def forward_gru(params, x):
            wi, wh, b, w, bo = params
            n = wh.shape[1]
            gx = jnp.swapaxes(x @ wi.T + b, 0, 1)  # (T, N, 3h): every step's input projection at once

            def cell(h, gx_t):
                gh = h @ wh.T
                r = jax.nn.sigmoid(gx_t[:, :n] + gh[:, :n])
                z = jax.nn.sigmoid(gx_t[:, n:2 * n] + gh[:, n:2 * n])
                cand = jnp.tanh(gx_t[:, 2 * n:] + r * gh[:, 2 * n:])
                return cand + z * (h - cand), None

            h, _ = jax.lax.scan(cell, jnp.zeros((x.shape[0], n), x.dtype), gx)
            return h @ w.T + bo

        convs, convs1d = spec.get("convs", []), spec.get("convs1d", [])

        def forward(params, x):
            h = x
            for k in range(len(convs)):  # LeNet-5: conv (cross-correlation, as torch), relu, 2x2 max pool
                h = jax.lax.conv_general_dilated(h, params[2 * k], (1, 1), "VALID",
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                h = jax.nn.relu(h + params[2 * k + 1][None, :, None, None])
                h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            for k, (_, _, _, st, pd) in enumerate(convs1d):  # the MNIST-1D CNN: strided, padded, relu
                h = jax.lax.conv_general_dilated(h, params[2 * k], (st,), [(pd, pd)],
                                                 dimension_numbers=("NCH", "OIH", "NCH"))
                h = jax.nn.relu(h + params[2 * k + 1][None, :, None])
            if convs or convs1d:
                h = h.reshape(h.shape[0], -1)
            params = params[2 * (len(convs) + len(convs1d)):]
            for k, (_, _, a) in enumerate(layers):
                h = h @ params[2 * k].T + params[2 * k + 1]
                if a == "sigmoid":
                    h = jax.nn.sigmoid(h)
                elif a == "relu":
                    h = jax.nn.relu(h)
            if head == "softmax":
                h = jax.nn.softmax(h, axis=1)
            return h

        if spec.get("arch") == "gru":
            forward = forward_gru  # noqa: F811
        if spec["loss"] == "mse":
            def loss(params, x, y):
                return jnp.mean((forward(params, x) - y) ** 2)
        else:
            def loss(params, x, y):
                return optax.softmax_cross_entropy(forward(params, x), y).mean()

        kind, lr = spec["opt"]
        self.tx = optax.sgd(lr) if kind == "descent" else optax.adam(lr)
        tx = self.tx

        def step(params, opt_state, x, y):
            val, grads = jax.value_and_grad(loss)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, val

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.batches = [(jax.device_put(x), jax.device_put(y)) for x, y, _ in data]
        self.init = init
        self.reset()

    def reset(self):
        self.params_ = [self.jax.device_put(_flip_kernel(p).copy()) for p in self.init]
        self.opt_state = self.tx.init(self.params_)
        self.cursor = 0

    def _steps(self, n, record=None):
        step, batches, nb = self.step, self.batches, len(self.batches)
        params, state = self.params_, self.opt_state
        for i in range(n):
            x, y = batches[(self.cursor + i) % nb]
            params, state, val = step(params, state, x, y)
            if record is not None:
                record.append(val)
        self.jax.block_until_ready(params)
        self.params_, self.opt_state = params, state
        self.cursor = (self.cursor + n) % nb

    def run(self, n):
        self._steps(n)

    def trajectory(self, k):
        self.reset()
        seen = []
        self._steps(k, seen)
        return [float(v) for v in seen]

    def params(self):
        return [_flip_kernel(np.asarray(p, dtype=np.float32)) for p in self.params_]


# ----------------------------------------------------------------------------------- numpy (reference)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class NumpyTrain:
    """Hand-written forward/backward and Optimisers.jl's Descent/Adam in float32 numpy: the
    independent reference the correctness check compares every library against."""

    def __init__(self, spec, data, init):
        self.spec = spec
        self.batches = [(x, y) for x, y, _ in data]
        self.init = init
        self.reset()

    def reset(self):
        self.ps = [p.copy() for p in self.init]
        self.m = [np.zeros_like(p) for p in self.ps]
        self.v = [np.zeros_like(p) for p in self.ps]
        self.t = 0
        self.cursor = 0

    def loss_and_grads(self, x, y):
        if self.spec.get("arch") == "gru":
            return self._gru_loss_and_grads(x, y)
        if self.spec.get("arch") == "lenet5":
            return self._lenet_loss_and_grads(x, y)
        if self.spec.get("arch") == "cnn1d":
            return self._cnn1d_loss_and_grads(x, y)
        spec, ps = self.spec, self.ps
        hs, zs = [x], []
        for k, (_, _, a) in enumerate(spec["layers"]):
            z = hs[-1] @ ps[2 * k].T + ps[2 * k + 1]
            zs.append(z)
            hs.append(_sigmoid(z) if a == "sigmoid" else np.maximum(z, 0) if a == "relu" else z)
        out = hs[-1]
        if spec["loss"] == "mse":
            if spec["head"] == "softmax":
                p = _softmax(out)
                loss = np.mean((p - y) ** 2)
                dp = 2.0 * (p - y) / p.size
                dout = p * (dp - (dp * p).sum(axis=1, keepdims=True))
            else:
                loss = np.mean((out - y) ** 2)
                dout = 2.0 * (out - y) / out.size
        else:  # logitcrossentropy: mean over the batch of -sum(y * logsoftmax(out), dims=class)
            s = out - out.max(axis=1, keepdims=True)
            logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
            loss = np.mean(-(y * logp).sum(axis=1))
            dout = (np.exp(logp) - y) / out.shape[0]
        grads = [None] * len(ps)
        d = dout.astype(np.float32)
        for k in reversed(range(len(spec["layers"]))):
            grads[2 * k] = d.T @ hs[k]
            grads[2 * k + 1] = d.sum(axis=0)
            if k > 0:
                dh = d @ ps[2 * k]
                a = spec["layers"][k - 1][2]
                h = hs[k]
                d = dh * h * (1 - h) if a == "sigmoid" else dh * (zs[k - 1] > 0) if a == "relu" else dh
        return float(loss), grads

    @staticmethod
    def _lce(out, y):
        """logitcrossentropy and its gradient with respect to the logits."""
        s = out - out.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        return np.mean(-(y * logp).sum(axis=1)), ((np.exp(logp) - y) / out.shape[0]).astype(np.float32)

    def _gru_loss_and_grads(self, x, y):
        """Flux's GRU (r, z, h̃ gates, reset after the recurrent product) over time, the last step's
        output into a Dense, logitcrossentropy; backprop through time by hand."""
        wi, wh, b, w, bo = self.ps
        n, steps = wh.shape[1], x.shape[1]
        h = np.zeros((x.shape[0], n), np.float32)
        cache = []
        for t in range(steps):
            gx = x[:, t] @ wi.T + b
            gh = h @ wh.T
            r = _sigmoid(gx[:, :n] + gh[:, :n])
            z = _sigmoid(gx[:, n:2 * n] + gh[:, n:2 * n])
            cand = np.tanh(gx[:, 2 * n:] + r * gh[:, 2 * n:])
            cache.append((h, r, z, cand, gh[:, 2 * n:]))
            h = cand + z * (h - cand)
        loss, dout = self._lce(h @ w.T + bo, y)
        dw, dbo = dout.T @ h, dout.sum(axis=0)
        dh = dout @ w
        dwi, dwh, db = np.zeros_like(wi), np.zeros_like(wh), np.zeros_like(b)
        for t in reversed(range(steps)):
            hp, r, z, cand, ghn = cache[t]
            dcand = dh * (1 - z)
            dz = dh * (hp - cand)
            da_n = dcand * (1 - cand * cand)
            da_r = da_n * ghn * r * (1 - r)
            da_z = dz * z * (1 - z)
            dgx = np.concatenate([da_r, da_z, da_n], axis=1)
            dgh = np.concatenate([da_r, da_z, da_n * r], axis=1)
            dwi += dgx.T @ x[:, t]
            db += dgx.sum(axis=0)
            dwh += dgh.T @ hp
            dh = dh * z + dgh @ wh
        return float(loss), [dwi, dwh, db, dw, dbo]

    def _lenet_loss_and_grads(self, x, y):
        """LeNet-5: two (true) convolutions by im2col, each with relu and a 2x2 max pool (the gradient
        goes to each window's argmax), flatten, the Dense layers, logitcrossentropy."""
        spec, ps = self.spec, self.ps
        nc = len(spec["convs"])
        h, cache = x, []
        for c in range(nc):
            w, b = ps[2 * c], ps[2 * c + 1]
            wf = w[:, :, ::-1, ::-1]  # a convolution is a cross-correlation with the flipped kernel
            o, ci, k, _ = w.shape
            n, _, hh, ww = h.shape
            ho, wo = hh - k + 1, ww - k + 1
            # im2col: rows (n, i, j), columns (channel, ki, kj) as the weight's
            cols = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(2, 3))  # (n, ci, ho, wo, k, k)
            cols = cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, ci * k * k)
            z = (cols @ wf.reshape(o, -1).T + b).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
            a = np.maximum(z, 0)
            win = a.reshape(n, o, ho // 2, 2, wo // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, o, ho // 2, wo // 2, 4)
            arg = win.argmax(axis=-1)
            cache.append((h.shape, cols, wf, z, arg))
            h = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
        pooled_shape = h.shape
        hs, zs = [h.reshape(h.shape[0], -1)], []
        dense = ps[2 * nc:]
        for k, (_, _, act) in enumerate(spec["layers"]):
            z = hs[-1] @ dense[2 * k].T + dense[2 * k + 1]
            zs.append(z)
            hs.append(np.maximum(z, 0) if act == "relu" else z)
        loss, d = self._lce(hs[-1], y)
        grads = [None] * len(ps)
        for k in reversed(range(len(spec["layers"]))):
            grads[2 * nc + 2 * k] = d.T @ hs[k]
            grads[2 * nc + 2 * k + 1] = d.sum(axis=0)
            d = d @ dense[2 * k]
            if k > 0:
                d = d * (zs[k - 1] > 0)
        d = d.reshape(pooled_shape)
        for c in reversed(range(nc)):
            xshape, cols, wf, z, arg = cache[c]
            n, o, ho, wo = z.shape
            k = wf.shape[-1]
            dwin = np.zeros(arg.shape + (4,), np.float32)
            np.put_along_axis(dwin, arg[..., None], d[..., None], axis=-1)
            da = dwin.reshape(n, o, ho // 2, wo // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, o, ho, wo)
            dz = (da * (z > 0)).transpose(0, 2, 3, 1).reshape(n * ho * wo, o)
            grads[2 * c] = (dz.T @ cols).reshape(wf.shape)[:, :, ::-1, ::-1].copy()
            grads[2 * c + 1] = dz.sum(axis=0)
            if c > 0:  # col2im: every kernel offset adds its slice of the column gradient back
                dcols = (dz @ wf.reshape(o, -1)).reshape(n, ho, wo, *wf.shape[1:])
                d = np.zeros(xshape, np.float32)
                for i in range(k):
                    for j in range(k):
                        d[:, :, i:i + ho, j:j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return float(loss), grads

    def _cnn1d_loss_and_grads(self, x, y):
        """The MNIST-1D CNN: strided, padded (true) 1-D convolutions by im2col, each with relu,
        flatten, a Dense, logitcrossentropy."""
        spec, ps = self.spec, self.ps
        nc = len(spec["convs1d"])
        h, cache = x, []
        for c, (_, o, k, st, pd) in enumerate(spec["convs1d"]):
            wf = ps[2 * c][:, :, ::-1]  # a convolution is a cross-correlation with the flipped kernel
            n, ci, length = h.shape
            hp = np.pad(h, ((0, 0), (0, 0), (pd, pd)))
            cols = np.lib.stride_tricks.sliding_window_view(hp, k, axis=2)[:, :, ::st]  # (n, ci, lo, k)
            lo = cols.shape[2]
            cols = cols.transpose(0, 2, 1, 3).reshape(n * lo, ci * k)
            z = (cols @ wf.reshape(o, -1).T + ps[2 * c + 1]).reshape(n, lo, o).transpose(0, 2, 1)
            cache.append((hp.shape, cols, wf, z, st, pd))
            h = np.maximum(z, 0)
        flat = h.reshape(h.shape[0], -1)
        w, b = ps[2 * nc], ps[2 * nc + 1]
        loss, d = self._lce(flat @ w.T + b, y)
        grads = [None] * len(ps)
        grads[2 * nc], grads[2 * nc + 1] = d.T @ flat, d.sum(axis=0)
        d = (d @ w).reshape(h.shape)
        for c in reversed(range(nc)):
            pshape, cols, wf, z, st, pd = cache[c]
            n, o, lo = z.shape
            k = wf.shape[-1]
            dz = (d * (z > 0)).transpose(0, 2, 1).reshape(n * lo, o)
            grads[2 * c] = (dz.T @ cols).reshape(wf.shape)[:, :, ::-1].copy()
            grads[2 * c + 1] = dz.sum(axis=0)
            if c > 0:  # col2im: each kernel offset adds its strided slice of the column gradient back
                dcols = (dz @ wf.reshape(o, -1)).reshape(n, lo, wf.shape[1], k)
                dp = np.zeros(pshape, np.float32)
                for j in range(k):
                    dp[:, :, j:j + st * (lo - 1) + 1:st] += dcols[:, :, :, j].transpose(0, 2, 1)
                d = dp[:, :, pd:pshape[2] - pd]
        return float(loss), grads

    def _update(self, grads):
        kind, lr = self.spec["opt"]
        if kind == "descent":
            for p, g in zip(self.ps, grads):
                p -= np.float32(lr) * g
            return
        b1, b2, eps = 0.9, 0.999, 1e-8
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(self.ps, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr * (m / c1) / (np.sqrt(v / c2) + eps)).astype(np.float32)

    def _steps(self, n, record=None):
        nb = len(self.batches)
        for i in range(n):
            x, y = self.batches[(self.cursor + i) % nb]
            loss, grads = self.loss_and_grads(x, y)
            self._update(grads)
            if record is not None:
                record.append(loss)
        self.cursor = (self.cursor + n) % nb

    def run(self, n):
        self._steps(n)

    def trajectory(self, k):
        self.reset()
        seen = []
        self._steps(k, seen)
        return seen

    def params(self):
        return [p.copy() for p in self.ps]


class NumpySgemm:
    """numpy's BLAS (OpenBLAS in the PyPI wheels) through ``np.dot`` on float32."""

    def __init__(self, spec, a, b):
        self.a, self.b = a, b

    def run(self, n):
        for _ in range(n):
            c = np.dot(self.a, self.b)
        return c

    def result(self):
        return self.run(1)


TRAIN = {"torch": TorchTrain, "jax": JaxTrain, "numpy": NumpyTrain}


def fluxrs_options(lib):
    """(compile, feed, loop) from a fluxrs row's name: "fluxrs[-compiled][-FEED][-LOOP][-Nthread(s)]"."""
    parts = lib.split("-")[1:]
    parts = [p for p in parts if p not in ("1thread", "2threads")]
    compile = "compiled" in parts
    feed = next((p for p in parts if p in FEEDS), "tensors")
    loop = next((p for p in parts if p in LOOPS), "train")
    if len(parts) != compile + (feed != "tensors") + (loop != "train"):
        raise ValueError(f"unknown fluxrs row {lib!r}")
    return compile, feed, loop
SGEMM = {"fluxrs": FluxrsSgemm, "torch": TorchSgemm, "numpy": NumpySgemm}


def make(lib, spec, data=None, init=None, mats=None):
    kind = spec["kind"]
    if kind == "train":
        if lib.startswith("fluxrs"):
            return FluxrsTrain(spec, data, init, *fluxrs_options(lib))
        return TRAIN[lib](spec, data, init)
    if kind == "sgemm":
        return SGEMM[lib](spec, *mats)
    if kind == "threads":
        return FluxrsThreads(spec, data, init, 2 if lib.endswith("2threads") else 1, *fluxrs_options(lib))
    raise ValueError(f"no adapter for workload kind {kind!r}")


def version(lib):
    if lib.startswith("fluxrs"):
        import fluxrs
        return getattr(fluxrs, "__version__", "?")
    if lib == "torch":
        import torch
        return torch.__version__
    if lib == "jax":
        import jax
        import jaxlib
        import optax
        return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}"
    return f"numpy {np.__version__}"
