"""Our pipeline against the authors' implementation, all randomness zero, fp32 on the CPU.

The reference arrays were made by running the authors' code (commit f637805) on the
same checkpoints; see tests/data/authors_reference/README.md. The issue's bar: the
float image before quantisation within 1e-4.
"""

import pytest
import torch
from authors_reference import authors_state_dict, reference_input, reference_outputs

from dossr_cli.checkpoint.authors import networks_from_authors_state_dict
from dossr_cli.pipeline import DoSSRPipeline
from dossr_cli.schedule import coefficient_table

TOLERANCE = 1e-4


class ZeroNoisePipeline(DoSSRPipeline):
    """Every random draw zero: the posterior sample is its mean, the SDE runs noiseless."""

    def draw_noise(self, seeds, shape, count):
        return [torch.zeros(len(seeds), *shape, device=self.device) for _ in range(count)]


@pytest.fixture(scope="module", params=["tiny", "tinyb"])
def case(request):
    name = request.param
    nets = networks_from_authors_state_dict(authors_state_dict(name))
    return name, ZeroNoisePipeline(nets, device="cpu", dtype="fp32"), reference_outputs(name), reference_input(name)


def test_every_reference_case_matches(case):
    name, pipe, ref, lq = case
    images = {k: v for k, v in ref.items() if k.startswith("image.")}
    assert images, "no reference images"
    for key, expected in sorted(images.items()):
        _, order, steps, color_fix = key.split(".")
        out = pipe.upscale_tensor(lq, steps=int(steps[5:]), order=int(order[5:]), color_fix=color_fix, seeds=[0])
        assert out.shape[1:] == expected.shape, key
        error = (out[0] - expected).abs().max().item()
        assert error < TOLERANCE, f"{name} {key}: max abs error {error:.2e}"


@torch.no_grad()
def test_intermediates_match(case):
    """Stage by stage, so a failure points at the stage that drifted."""
    _, pipe, ref, lq = case
    nets = pipe.networks
    pre = nets.preprocessor(lq).clamp(0, 1)
    torch.testing.assert_close(pre[0], ref["inter.pre"], rtol=0, atol=1e-5)
    c_latent = nets.control_encoder(pre * 2 - 1)
    torch.testing.assert_close(c_latent[0], ref["inter.c_latent"], rtol=0, atol=1e-5)
    x0_hat = nets.vae.encode(pre * 2 - 1).latent_dist.mean * nets.config.vae.scaling_factor
    torch.testing.assert_close(x0_hat[0], ref["inter.x0_hat"], rtol=0, atol=1e-5)
    torch.testing.assert_close(nets.context[0], ref["inter.context"], rtol=0, atol=1e-5)

    table = coefficient_table(5)
    predict_eps = pipe.eps_predictor(c_latent)
    z = float(table.alphas_cumprod[5]) ** 0.5 * x0_hat
    eps = predict_eps(z, int(table.timesteps[5]))
    torch.testing.assert_close(eps[0], ref["inter.eps_0"], rtol=0, atol=1e-4)

    decoded = (nets.vae.decode(ref["inter.z_final"][None] / nets.config.vae.scaling_factor).sample + 1) / 2
    torch.testing.assert_close(decoded[0], ref["inter.decoded"], rtol=0, atol=1e-4)


def test_the_imported_checkpoint_loads_in_both_file_layouts():
    """Plain dict, Lightning {"state_dict": ...} and `module.`-prefixed give the same networks."""
    state = authors_state_dict("tinyb")
    plain = networks_from_authors_state_dict(state).state_dict()
    for wrapped in ({"state_dict": state}, {"module." + k: v for k, v in state.items()}):
        other = networks_from_authors_state_dict(wrapped).state_dict()
        assert all(torch.equal(plain[k], other[k]) for k in plain)


def test_faithful_through_the_importer_and_the_bundle(tmp_path):
    """The authors' file -> `import_checkpoint` -> bundle on disk -> loaded: still the authors' output."""
    from dossr_cli.checkpoint.bundle import load_bundle
    from dossr_cli.checkpoint.importer import import_checkpoint

    checkpoint = tmp_path / "dossr_tiny.ckpt"
    torch.save({"state_dict": authors_state_dict("tiny")}, checkpoint)  # the Lightning wrapping, for good measure
    bundle = import_checkpoint(checkpoint, tmp_path / "bundle")
    pipe = ZeroNoisePipeline(load_bundle(bundle), device="cpu", dtype="fp32")
    ref = reference_outputs("tiny")
    for key in ("image.order3.steps5.wavelet", "image.order1.steps10.wavelet", "image.order3.steps5.adain"):
        _, order, steps, color_fix = key.split(".")
        out = pipe.upscale_tensor(reference_input("tiny"), steps=int(steps[5:]), order=int(order[5:]),
                                  color_fix=color_fix, seeds=[0])
        error = (out[0] - ref[key]).abs().max().item()
        assert error < TOLERANCE, f"{key}: max abs error {error:.2e}"
