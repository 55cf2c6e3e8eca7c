r"""Probability density distillation (van den Oord et al., 2018, Parallel WaveNet).

A *teacher* :math:`t` that evaluates densities in one parallel pass (a MAF) trains a *student*
:math:`s` that samples in one parallel pass (an IAF) by minimising the reverse KL divergence

.. math:: \mathrm{KL}(s\,\|\,t) = \mathbb E_{x \sim s}\big[\log s(x) - \log t(x)\big]
          = -H(s) + H(s, t),

estimated by Monte Carlo on the student's own samples. The samples are *reparametrized*,
:math:`x = f_s(z)` with :math:`z \sim \mathcal N(0, I)`, so the gradient with respect to the
student's parameters flows through :math:`x` into the teacher's log-density; the student's
:math:`\log s(x)` comes with the sample (:meth:`~flowlib.Flow.sample_and_log_prob`: no inversion)
and the teacher's :math:`\log t(x)` takes one parallel pass. Neither direction is ever sequential.

When student and teacher are both Gaussian autoregressive *in the same ordering* (stacks of IAF,
resp. MAF, layers with no permutation between them), each conditional is a Gaussian,
:math:`s(x_i \mid x_{<i}) = \mathcal N(\mu^s_i, \sigma^{s\,2}_i)` and likewise for :math:`t`, and
the chain rule of the KL gives the lower-variance estimator used in Parallel WaveNet,

.. math:: \mathrm{KL}(s\,\|\,t) = \mathbb E_{x \sim s} \sum_i
          \mathrm{KL}\big(\mathcal N(\mu^s_i, \sigma^{s\,2}_i)\,\|\,\mathcal N(\mu^t_i, \sigma^{t\,2}_i)\big),

with each term in closed form (:func:`gaussian_kl`): :func:`gaussian_ar_kl`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .autoregressive import MaskedAutoregressive
from .bijection import Compose, Inverse
from .maps import AffineMap
from .data import Estimate
from .distributions import Flow, StandardNormal
from .train import History, device, train_loop

__all__ = ["kl_samples", "kl_estimate", "gaussian_kl", "gaussian_ar_kl", "distill"]


def _event_shape(flow: nn.Module, who: str) -> tuple[int, ...]:
    shape = getattr(flow, "event_shape", None)
    if shape is None:
        raise TypeError(f"distill: the {who} must be a Flow (with event_shape, log_prob and "
                        f"sample_and_log_prob), got {type(flow).__name__}")
    return tuple(shape)


def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
    s, t = _event_shape(student, "student"), _event_shape(teacher, "teacher")
    if s != t:
        raise ValueError(f"distill: the student's samples have shape {s} but the teacher models "
                         f"shape {t}; student and teacher must have the same dimension")
    if not hasattr(student, "sample_and_log_prob"):
        raise TypeError("distill: the student needs sample_and_log_prob(n)")


def kl_samples(student: nn.Module, teacher: nn.Module, n: int) -> Tensor:
    r"""``n`` single-sample estimates :math:`\log s(x) - \log t(x)`, :math:`x \sim s`, shape ``[n]``.

    Their mean is an unbiased estimate of :math:`\mathrm{KL}(s\,\|\,t)`; it is differentiable with
    respect to the student's parameters through the reparametrized samples (and through the
    teacher's log-density of them).
    """
    _check_pair(student, teacher)
    x, log_s = student.sample_and_log_prob(int(n))
    return log_s - teacher.log_prob(x)


def kl_estimate(student: nn.Module, teacher: nn.Module, n: int = 10_000,
                batch_size: int = 4096) -> Estimate:
    r"""Monte Carlo :math:`\mathrm{KL}(s\,\|\,t)` in nats with its standard error (no gradient)."""
    vals = []
    with torch.no_grad():
        left = int(n)
        while left > 0:
            vals.append(kl_samples(student, teacher, min(batch_size, left)).double().cpu())
            left -= batch_size
    v = torch.cat(vals)
    return Estimate(v.mean().item(), (v.std() / math.sqrt(len(v))).item())


def gaussian_kl(mu_s: Tensor, log_sigma_s: Tensor, mu_t: Tensor, log_sigma_t: Tensor) -> Tensor:
    r"""Elementwise :math:`\mathrm{KL}(\mathcal N(\mu_s, \sigma_s^2)\,\|\,\mathcal N(\mu_t, \sigma_t^2))
    = \log\frac{\sigma_t}{\sigma_s} + \frac{\sigma_s^2 + (\mu_s - \mu_t)^2}{2\sigma_t^2} - \frac12`."""
    return (log_sigma_t - log_sigma_s
            + 0.5 * (torch.exp(2 * (log_sigma_s - log_sigma_t))
                     + ((mu_s - mu_t) * torch.exp(-log_sigma_t)) ** 2) - 0.5)


def _ar_layers(flow: nn.Module, inverted: bool, who: str) -> list[MaskedAutoregressive]:
    """The MaskedAutoregressive layers of a Gaussian autoregressive flow, or a clear error."""
    need = ("a stack of IAF layers (MaskedAutoregressive(...).inv)" if inverted
            else "a stack of MAF layers (MaskedAutoregressive)")
    bij = getattr(flow, "bijection", None)
    if not isinstance(flow, Flow) or not isinstance(flow.base, StandardNormal):
        raise ValueError(f"gaussian_ar_kl: the {who} must be a Flow with a StandardNormal base")
    layers = list(bij.layers) if isinstance(bij, Compose) else [bij]
    out = []
    for layer in layers:
        if inverted and isinstance(layer, Inverse) and isinstance(layer.base, MaskedAutoregressive):
            out.append(layer.base)
        elif not inverted and isinstance(layer, MaskedAutoregressive):
            out.append(layer)
        else:
            raise ValueError(f"gaussian_ar_kl: the {who} must be {need} with no permutation in "
                             f"between (each conditional is then Gaussian); found "
                             f"{type(layer).__name__}")
        if not isinstance(out[-1].elementwise, AffineMap):
            raise ValueError(f"gaussian_ar_kl: the {who}'s layers must use the affine map "
                             f"(Gaussian conditionals), found {type(out[-1].elementwise).__name__}")
        if out[-1].made.context_features:
            raise ValueError("gaussian_ar_kl: conditional (context) layers are not supported")
    return out


def gaussian_ar_kl(student: Flow, teacher: Flow, n: int) -> Tensor:
    r"""``n`` estimates of :math:`\sum_i \mathrm{KL}(s(x_i \mid x_{<i})\,\|\,t(x_i \mid x_{<i}))`
    at student samples :math:`x \sim s`, shape ``[n]``; their mean is :math:`\mathrm{KL}(s\,\|\,t)`.

    The student must be a stack of IAF layers and the teacher a stack of MAF layers, all with the
    *same* ordering and no permutations, both over a standard normal: then, given :math:`x_{<i}`,
    :math:`x_i = \sigma_i z_i + \mu_i` in both, with :math:`\log\sigma_i` the sum of the layers'
    log-scales of coordinate :math:`i`. The student's are read off its parallel generative pass, the
    teacher's off its parallel normalizing pass at the student's sample; the per-coordinate KLs are
    in closed form (:func:`gaussian_kl`). Differentiable through the reparametrized samples.
    """
    _check_pair(student, teacher)
    s_layers = _ar_layers(student, inverted=True, who="student")
    t_layers = _ar_layers(teacher, inverted=False, who="teacher")
    order = t_layers[0].order
    if any(not torch.equal(m.order, order) for m in s_layers + t_layers):
        raise ValueError("gaussian_ar_kl: every layer of student and teacher must use the same "
                         "ordering (otherwise the conditionals are not Gaussian)")
    z = student.base.sample(int(n))
    x, log_sigma_s = z, torch.zeros_like(z)
    for m in s_layers:                 # IAF layer = MAF layer's inverse: x <- x e^{-s} + t
        t, s = m.shift_and_log_scale(x)
        x = torch.addcmul(t, x, torch.exp(-s))
        log_sigma_s = log_sigma_s - s
    mu_s = x - torch.exp(log_sigma_s) * z
    u, log_sigma_t = x, torch.zeros_like(x)
    for m in reversed(t_layers):       # normalizing pass of the MAF: u <- u e^{-s} + t
        t, s = m.shift_and_log_scale(u)
        u = torch.addcmul(t, u, torch.exp(-s))
        log_sigma_t = log_sigma_t + s
    mu_t = x - torch.exp(log_sigma_t) * u
    return gaussian_kl(mu_s, log_sigma_s, mu_t, log_sigma_t).sum(1)


def _forward_cross_entropy(student: nn.Module, teacher: nn.Module, n: int) -> Tensor:
    r""":math:`-\frac1n\sum_b \log s(x_b)`, :math:`x_b \sim t` (the teacher's samples, without
    gradient; rows that overflowed in its sequential pass are dropped)."""
    x = teacher.sample(int(n))
    x = x[torch.isfinite(x).flatten(1).all(1)]
    return -student.log_prob(x).mean()


def distill(student: nn.Module, teacher: nn.Module, steps: int = 1000, batch_size: int = 256,
            lr: float = 3e-3, *, estimator: str = "mc", clip: float | None = 10.0,
            schedule: str = "cosine", warmup: float = 0.0, dev: torch.device | None = None,
            progress: bool | None = None) -> History:
    r"""Train ``student`` to minimise :math:`\mathrm{KL}(s\,\|\,t)` to a frozen ``teacher`` with Adam.

    Args:
        student: a flow with ``sample_and_log_prob(n)`` (an IAF: one parallel pass).
        teacher: a flow with ``log_prob(x)`` (a MAF: one parallel pass), already trained. Its
            parameters get ``requires_grad=False`` and it is put in eval mode for the duration
            (both restored afterwards); it is never updated.
        steps, batch_size, lr: the budget; ``batch_size`` student samples per step.
        estimator: ``"mc"`` (:func:`kl_samples`, any student and teacher) or ``"gaussian"``
            (:func:`gaussian_ar_kl`, the per-step closed form, lower variance).
        warmup: the fraction of ``steps`` spent first on the *forward* KL, maximising the
            student's likelihood of teacher samples, :math:`-\mathbb E_{x \sim t} \log s(x)`
            (equal to :math:`\mathrm{KL}(t\,\|\,s)` up to the teacher's entropy). Mass-covering, it
            puts the student on every mode of the teacher before the mode-seeking reverse KL
            refines it. It needs the teacher's samples (its sequential pass, without gradient)
            and the student's density of given points (the IAF's sequential direction, with
            gradient: :math:`D` MADE passes per layer), so it is cheap in low dimension only.
        clip, schedule, dev, progress: as in :func:`~flowlib.fit`.

    Returns:
        a :class:`~flowlib.train.History` whose ``loss`` is the KL estimate (nats) at each step
        (during the warm-up, the cross-entropy :math:`-\mathbb E_t \log s`).

    The course's recipe is these defaults (Adam at ``lr`` 3e-3 decayed to 0 by a cosine over
    ``steps``, gradient norm clipped at 10) and, where the student's sequential density is cheap
    (low dimension), ``warmup=0.2``: the reverse KL is mode-seeking, and a student that starts by
    covering every mode of the teacher does not get stuck with mass stranded between them. The
    benchmark appendix measures the recipe and what each part changes.

    A non-finite estimate raises ``FloatingPointError`` before the update.
    """
    _check_pair(student, teacher)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"distill: steps and batch_size must be positive, got {steps}, "
                         f"{batch_size}")
    estimators = {"mc": kl_samples, "gaussian": gaussian_ar_kl}
    if estimator not in estimators:
        raise ValueError(f"distill: estimator must be 'mc' or 'gaussian', got {estimator!r}")
    estimate = estimators[estimator]
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"distill: warmup must be a fraction in [0, 1), got {warmup}")
    n_warm = int(round(warmup * steps))
    dev = torch.device(dev) if dev is not None else device()
    student.to(dev)
    teacher.to(dev)
    teacher_params = list(teacher.parameters())
    if any(p is q for p in student.parameters() for q in teacher_params):
        raise ValueError("distill: student and teacher share parameters")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("distill: the student has no trainable parameters")

    def loss_at(step: int) -> Tensor:
        if step < n_warm:
            return _forward_cross_entropy(student, teacher, batch_size)
        return estimate(student, teacher, batch_size).mean()

    # Freeze the teacher: gradients still flow *through* its log-density into the samples, but
    # none accumulate in its parameters (and eval mode fixes e.g. batch-norm statistics).
    was_training, flags = teacher.training, [p.requires_grad for p in teacher_params]
    teacher.eval()
    for p in teacher_params:
        p.requires_grad_(False)
    student.train()
    try:
        return train_loop(loss_at, params, steps, lr, who="distill", dev=dev, schedule=schedule,
                          clip=clip, quantity="KL estimate", progress=progress)
    finally:
        for p, f in zip(teacher_params, flags):
            p.requires_grad_(f)
        teacher.train(was_training)
        student.eval()
