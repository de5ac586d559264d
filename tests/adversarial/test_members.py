"""Attack members keep their training defences: id tags, and noise on x or z at inference."""

import math

import torch

from noisydeq.attacks.hardware import make_level
from noisydeq.attacks.members import defence_tag, defended_model, inference_noise
from noisydeq.models import DEQ


def test_tags_and_inference_noise():
    z10 = {"noise": {"site": "state", "snr_db": 10.0}, "adversarial": {"method": "pgd"}}
    assert defence_tag(z10) == "z-pgd" and inference_noise(z10).snr_db == 10.0
    x0 = {"noise": {"site": "input", "snr_db": 0.0}, "solver": {"random_threshold": True},
          "random_state": {}, "adversarial": {"method": "trades"}}
    assert defence_tag(x0) == "x-thr-rs-trades"
    signal = {"noise": {"site": "signal", "snr_db": 10.0}}  # not a defence of the paper
    assert defence_tag(signal) == "" and inference_noise(signal) is None
    assert defence_tag({}) == "" and inference_noise({}) is None


def test_a_noise_defended_model_is_judged_with_its_noise():
    torch.manual_seed(0)
    model = DEQ(6, 5, 3).eval()
    member = defended_model(model, "deq", 1, 5, 30, 0,
                            {"noise": {"site": "state", "snr_db": 0.0}})
    assert member.model_id.endswith("-z") and math.isfinite(member.train_snr_db)
    lvl = make_level(model, device="ideal", noise_site="device", snr_db=math.inf, chip=0,
                     seed=1, calib_x=None, inference_noise=member.inference_noise)
    x = torch.rand(8, 6)
    with torch.no_grad():
        clean, noisy = model(x), model(x, lvl.noise)
    assert lvl.noise is not None and not torch.allclose(clean, noisy)
    plain = make_level(model, device="ideal", noise_site="device", snr_db=math.inf, chip=0,
                       seed=1, calib_x=None, inference_noise=None)
    assert plain.noise is None
