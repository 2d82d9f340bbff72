"""The CLI flags, the --config TOML keys and the resolved config.toml are one list; a misspelled key names the
closest valid one. In-process, no MPI."""
import argparse

import pytest
import torch

from neptune_rt.train.config import FIELDS, ConfigError, TrainConfig, add_arguments, dump_toml, load_toml, resolve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_every_field_has_a_flag_and_help():
    text = _parser().format_help()
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in text


def test_toml_mirrors_flags_and_flags_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "csv:/x"\nbatch-size = 128\nepochs = 3\nforce_codec = true\ncompression = "int8"\n')
    args = vars(_parser().parse_args(["--config", str(cfg), "--batch-size", "64"]))
    config = resolve(args)
    assert (config.data, config.batch_size, config.epochs, config.force_codec, config.compression) == \
        ("csv:/x", 64, 3.0, True, "int8")
    assert config.lr == TrainConfig().lr  # untouched keys keep their defaults


def test_dump_toml_reads_back_identically(tmp_path):
    config = TrainConfig(data="csv:/a \"b\"", hidden="32,16", tensorboard=True, lr=0.125)
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config, "header"))
    assert resolve({}, load_toml(path)) == config


@pytest.mark.parametrize("key, want", [("batch_szie", "batch_size"), ("compresion", "compression"),
                                       ("learning-rate", "lr"), ("check_point_every", "checkpoint_every")])
def test_misspelled_key_suggests_the_closest(tmp_path, key, want):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"{key} = 1\n")
    with pytest.raises(ConfigError, match=rf"unknown key '{key}'; did you mean '{want}'\?"):
        load_toml(cfg)
    cfg.write_text("zzzz = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'zzzz'; valid keys: data, data_dir"):
        load_toml(cfg)


@pytest.mark.parametrize("text, match", [
    ('epochs = "two"', "key 'epochs' must be a float"),
    ("batch_size = 0", "--batch-size must be >= 1"),
    ('compression = "int3"', "unknown compression 'int3'"),
    ('model = "resnet"', "unknown model 'resnet'"),
    ("steps = ", "not valid TOML"),
])
def test_bad_values_are_named(tmp_path, text, match):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError, match=match):
        resolve({"config": str(cfg)})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize("codec, warns", [("onebit", True), ("int4", True), ("int8", False), ("none", False)])
def test_goodput_with_a_coarse_codec_warns_that_the_noise_scale_reads_low(codec, warns):
    import warnings

    from neptune_rt.train.balance import Balancer
    # Without local momentum (AdamW, say; under it goodput is refused, below)
    config = TrainConfig(balance="goodput", compression=codec, batch_size=64).validate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Balancer(config, rank=0, size=2).check_codec(local_momentum=False)
        Balancer(config, rank=1, size=2).check_codec(local_momentum=False)  # rank 0 alone says it
    said = [str(w.message) for w in caught if "noise scale" in str(w.message)]
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert f"--compression {codec}" in said[0] and "int8, fp16 or bf16" in said[0]


def test_probed_or_backed_off_limits_never_shrink_the_trainers_global_batch():
    # Accumulation grows as needed: 4 ranks with micro-batch limits of 32 still run a global batch of 4096 (with the
    # scheduler's default max_accum of 16 it fell to 4 x 32 x 16 = 2048), and so does a back-off to 1.
    from neptune_rt.train.balance import Balancer
    for mode in ("hetero", "goodput"):
        balancer = Balancer(TrainConfig(balance=mode, batch_size=4096).validate(), rank=0, size=4)
        assert balancer.scheduler.set_max_micro([32] * 4).global_batch == 4096
        assert balancer.scheduler.set_max_micro([1, 32, 32, 32]).global_batch == 4096


def test_goodputs_efficiency_model_follows_sgd_momentum_only():
    from neptune_rt.train.balance import Balancer, sgd_momentum
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert sgd_momentum(torch.optim.SGD(params, lr=0.1, momentum=0.5)) == 0.5
    assert sgd_momentum(torch.optim.SGD(params, lr=0.1)) == 0.0
    assert sgd_momentum(torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)) == 0.9
    assert sgd_momentum(torch.optim.AdamW(params, lr=0.1)) == 0.0
    two_groups = torch.optim.SGD([{"params": params[:1], "momentum": 0.9},
                                  {"params": [torch.nn.Parameter(torch.zeros(1))], "momentum": 0.5}], lr=0.1)
    assert sgd_momentum(two_groups) == 0.5  # the more cautious model
    for mode, expected in (("goodput", 0.5), ("hetero", 0.0)):
        config = TrainConfig(balance=mode, batch_size=64).validate()
        assert Balancer(config, rank=0, size=2, momentum=0.5).scheduler.momentum == expected, mode
    for bad in (1.0, -0.5):
        with pytest.raises(ConfigError, match="--momentum must be in"):
            TrainConfig(momentum=bad).validate()


def test_a_ranks_own_micro_batch_cap_after_an_out_of_memory_survives_a_checkpoint():
    from neptune_rt.train.balance import Balancer
    config = TrainConfig(balance="hetero", batch_size=64).validate()
    before = Balancer(config, rank=1, size=2)
    assert before.caught_oom(MemoryError("test"), [32], step=0) and before.micro_batches(32) == [16, 16]
    after = Balancer(config, rank=1, size=2)
    after.load_state_dict(before.state_dict(), before.per_rank_state())
    assert after.micro_cap == 24 and after.micro_batches(32) == [16, 16]


def test_goodput_refuses_local_momentum_and_hetero_does_not_mind():
    from neptune_rt.train.balance import Balancer
    config = TrainConfig(balance="goodput", compression="onebit", batch_size=64).validate()
    with pytest.raises(ConfigError, match="cannot measure the gradient noise scale under local momentum"):
        Balancer(config, rank=1, size=2).check_codec(local_momentum=True)
    hetero = TrainConfig(balance="hetero", compression="onebit", batch_size=64).validate()
    Balancer(hetero, rank=1, size=2).check_codec(local_momentum=True)


def test_optimizer_state_still_to_come_is_counted_from_the_optimizer_itself():
    from neptune_rt.train.memory_probe import optimizer_state_bytes
    model = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    assert optimizer_state_bytes(torch.optim.AdamW(model.parameters())) == 2 * 440
    assert optimizer_state_bytes(torch.optim.Adam(model.parameters(), amsgrad=True)) == 3 * 440
    assert optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)) == 440
    assert optimizer_state_bytes(torch.optim.SGD(model.parameters(), lr=0.1)) == 0
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 10)).sum().backward()
    sgd.step()  # the momentum buffers exist now: nothing more to come
    assert optimizer_state_bytes(sgd) == 0


def test_ranks_sharing_a_gpu_split_it_and_a_share_left_empty_stops_every_rank():
    from neptune_rt.train.memory_probe import gpu_shares
    gib = float(2**30)
    # ranks 0 and 1 on one GPU of host a, rank 2 alone on another GPU of host a (one visible device each, as with
    # CUDA_VISIBLE_DEVICES per rank: told apart by UUID), rank 3 a CPU rank of a mixed job
    every = [("a", "GPU-1", 80 * gib, 10 * gib), ("a", "GPU-1", 80 * gib, 10 * gib), ("a", "GPU-2", 80 * gib, 10 * gib),
             None]
    assert gpu_shares(every, 0) == {0: 30 * gib, 1: 30 * gib, 2: 70 * gib}
    every[2] = ("b", "GPU-1", 80 * gib, 10 * gib)  # the same UUID on another host is another device
    assert gpu_shares(every, 0)[2] == 70 * gib
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[0, 1\] have no memory to train in: rank 0's GPU \(80.0 GiB\) "
                                           r"is shared by 2 rank\(s\) and the optimizer's state will take 45.0 GiB"):
        gpu_shares([("a", "GPU-1", 80 * gib, 45 * gib)] * 2, 3)
