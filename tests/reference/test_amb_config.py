"""Bad input is rejected with a ValueError that names the parameter."""

import math

import pytest

torch = pytest.importorskip("torch")

from pace_gguf.reference import ActivationMemoryBank, AmbConfig  # noqa: E402


@pytest.mark.parametrize("kwargs, name", [
    ({"bank_size": 0}, "bank_size"),
    ({"bank_size": 2.5}, "bank_size"),
    ({"topk": 0}, "topk"),
    ({"topk": True}, "topk"),
    ({"negk": -1}, "negk"),
    ({"store_topk": 0}, "store_topk"),
    ({"chunk": 0}, "chunk"),
    ({"retrieve_chunk": -3}, "retrieve_chunk"),
    ({"theta_high": 0.2, "theta_low": 0.3}, "theta_low"),
    ({"theta_high": 1.5}, "theta_high"),
    ({"theta_low": -0.1}, "theta_low"),
    ({"theta_low": math.nan}, "theta_low"),
    ({"alpha": 1.2}, "alpha"),
    ({"alpha": -0.01}, "alpha"),
    ({"momentum": 1.01}, "momentum"),
    ({"w_high": math.inf}, "w_high"),
    ({"w_mid": "0.5"}, "w_mid"),
    ({"negative_weight": math.nan}, "negative_weight"),
    ({"eps": 0.0}, "eps"),
    ({"mode": "legacy"}, "mode"),
    ({"legacy_zero_slots": 1}, "legacy_zero_slots"),
    ({"legacy_keep_last": "yes"}, "legacy_keep_last"),
])
def test_bad_config_names_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AmbConfig(**kwargs)


def test_edge_values_accepted():
    AmbConfig(theta_high=0.5, theta_low=0.5, alpha=0.0, momentum=1.0, negk=0)
    AmbConfig(theta_high=1.0, theta_low=0.0, alpha=1.0, mode="paper")


def test_from_dict_round_trip_and_unknown_key():
    cfg = AmbConfig(bank_size=7, mode="paper", legacy_keep_last=True)
    assert AmbConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        AmbConfig.from_dict({"bogus": 1})


def test_bank_rejects_bad_inputs():
    with pytest.raises(ValueError, match="d_ff"):
        ActivationMemoryBank(AmbConfig(), d_ff=0)
    with pytest.raises(ValueError, match="config"):
        ActivationMemoryBank({"bank_size": 3})
    bank = ActivationMemoryBank(AmbConfig(), d_ff=8)
    with pytest.raises(ValueError, match="d_ff"):
        bank(torch.zeros(3, 9))
    with pytest.raises(ValueError, match="floating"):
        bank(torch.zeros(3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="torch.Tensor"):
        bank([[0.0] * 8])
    with pytest.raises(ValueError, match="same shape"):
        bank.store(torch.zeros(3, 8), torch.zeros(2, 8))


def test_prompt_calls_must_pair():
    bank = ActivationMemoryBank(AmbConfig(), d_ff=4)
    with pytest.raises(RuntimeError, match="begin_prompt"):
        bank.end_prompt()
    bank.begin_prompt()
    with pytest.raises(RuntimeError, match="twice"):
        bank.begin_prompt()
