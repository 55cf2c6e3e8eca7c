"""Every public bijection passes the contract checks; the contract itself is enforced."""

import inspect

import pytest
import torch

import flowlib
from flowlib.testing import check_bijection, examples

EXAMPLES = list(examples())


@pytest.mark.parametrize("name,layer,z", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_check_bijection(name, layer, z):
    report = check_bijection(layer, z)
    assert report["round_trip"] < 1e-8


@pytest.mark.parametrize("name,layer,z", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_float32(name, layer, z):
    """The same layers in float32 keep their dtype and still round-trip."""
    layer = layer.float()
    z = z.float()
    check_bijection(layer, z, jacobian_samples=0)


def _public_bijections():
    found = {}
    for mod in [flowlib] + [getattr(flowlib, m) for m in dir(flowlib)
                            if inspect.ismodule(getattr(flowlib, m)) and
                            getattr(flowlib, m).__name__.startswith("flowlib.")]:
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj) and issubclass(obj, flowlib.Bijection) and obj is not flowlib.Bijection:
                found[obj.__qualname__] = obj
    return found


def test_every_public_bijection_has_an_example():
    covered = {type(layer) for _, layer, _ in EXAMPLES}
    missing = [n for n, cls in _public_bijections().items() if cls not in covered]
    assert not missing, f"public bijections without an example in flowlib.testing.examples(): {missing}"


def test_check_bijection_catches_a_wrong_log_det():
    class Bad(flowlib.ElementwiseAffine):
        def forward(self, z, context=None):
            x, ladj = super().forward(z, context)
            return x, ladj + 0.1  # wrong, but consistent with inverse? no: inverse unchanged

    layer = flowlib.testing.perturb(Bad(3)).double()
    with pytest.raises(AssertionError, match="ladj"):
        check_bijection(layer, torch.randn(4, 3, dtype=torch.float64))


def test_check_bijection_catches_a_wrong_inverse():
    class Bad(flowlib.Exp):
        def inverse(self, x, context=None):
            z, ladj = super().inverse(x, context)
            return z + 1e-3, ladj

    with pytest.raises(AssertionError, match="inverse"):
        check_bijection(Bad(), torch.randn(4, 3, dtype=torch.float64))


def test_check_bijection_catches_a_consistent_but_wrong_log_det():
    """ladj(f) + ladj(f^-1) = 0 holds, but both are wrong: only autograd catches it."""
    class Bad(flowlib.Tanh):
        @staticmethod
        def _ladj(z):
            return 2 * flowlib.Tanh._ladj(z)

    with pytest.raises(AssertionError, match="autograd"):
        check_bijection(Bad(), torch.randn(4, 3, dtype=torch.float64))


def test_compose_order_and_inverse():
    a = flowlib.testing.perturb(flowlib.ElementwiseAffine(2)).double()
    b = flowlib.Exp()
    f = flowlib.Compose(a, b)
    z = torch.randn(5, 2, dtype=torch.float64)
    x, ladj = f(z)
    assert torch.allclose(x, torch.exp(a(z)[0]))  # a first, then b
    assert torch.allclose(ladj, a(z)[1] + b(a(z)[0])[1])
    assert len(f.trace_forward(z)) == 3 and torch.allclose(f.trace_forward(z)[-1], x)
    assert torch.allclose(f.trace_inverse(x)[-1], z)
    assert flowlib.Compose([a, b])[1] is b


def test_inv_is_a_view_not_a_copy():
    a = flowlib.ElementwiseAffine(3)
    inv = a.inv
    assert inv.inv is a
    with torch.no_grad():
        a.shift.fill_(2.0)
    x = torch.zeros(1, 3)
    assert torch.allclose(inv(x)[0], torch.full((1, 3), -2.0))  # inverse of shift sees the update


def test_compose_rejects_non_bijections():
    with pytest.raises(TypeError, match="not a Bijection"):
        flowlib.Compose(flowlib.Exp(), torch.nn.Linear(2, 2))


@pytest.mark.parametrize("layer,bad", [
    (flowlib.ElementwiseAffine(3), torch.zeros(4, 2)),
    (flowlib.Linear(3), torch.zeros(4, 3, 1)),
    (flowlib.Permutation.reverse(3), torch.zeros(4, 2)),
    (flowlib.SinhArcsinh(3), torch.zeros(4, 5)),
])
def test_wrong_shapes_are_named(layer, bad):
    with pytest.raises(ValueError, match="expected"):
        layer(bad)
    with pytest.raises(ValueError, match="expected"):
        layer.inverse(bad)


@pytest.mark.parametrize("layer,bad", [
    (flowlib.Exp(), torch.tensor([[1.0, -1.0]])),
    (flowlib.Sigmoid(), torch.tensor([[0.5, 1.0]])),
    (flowlib.Tanh(), torch.tensor([[0.5, -1.5]])),
])
def test_out_of_domain_inverse_is_an_error(layer, bad):
    with pytest.raises(ValueError, match="must lie in"):
        layer.inverse(bad)


def test_permutation_validates():
    with pytest.raises(ValueError, match="not a permutation"):
        flowlib.Permutation([0, 0, 1])
    p = flowlib.Permutation([2, 0, 1])
    z = torch.tensor([[10.0, 11.0, 12.0]])
    assert p(z)[0].tolist() == [[12.0, 10.0, 11.0]]


def test_linear_log_det_is_slogdet():
    layer = flowlib.Linear(4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [1, 3, 0, 0], [0, 0, -1, 0], [0, 0, 0, 0.5]]))
    _, ladj = layer(torch.randn(3, 4))
    assert torch.allclose(ladj, torch.full((3,), float(torch.log(torch.tensor(3.0)))), atol=1e-6)


def test_leaky_relu_rejects_bad_slope():
    with pytest.raises(ValueError):
        flowlib.LeakyReLU(0.0)
