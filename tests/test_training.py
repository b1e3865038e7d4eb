import torch

import ddpm_lib as dl
from ddpm_lib import NoiseSchedule


def tiny_data():
    d = dl.load_mnist("train", source="embedded")
    return d.images[:256]


def test_tiny_training_run_loss_falls_and_is_deterministic():
    s = NoiseSchedule.linear()
    images = tiny_data()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = dl.BasicUNetFixed()
        runs.append(dl.train(model, images, s, steps=60, batch_size=32, lr=2e-3, seed=3, progress=False))
    a, b = runs
    assert len(a) == 60
    assert a == b  # same seed, same CPU: bit-identical losses
    first, last = sum(a[:10]) / 10, sum(a[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_resume_repeats_no_step():
    s = NoiseSchedule.linear(num_timesteps=100)
    images = tiny_data()[:64]
    torch.manual_seed(0)
    full_model = dl.BasicUNetFixed(num_timesteps=100)
    torch.manual_seed(0)
    split_model = dl.BasicUNetFixed(num_timesteps=100)
    full = dl.train(full_model, images, s, steps=8, batch_size=8, seed=1, progress=False)
    opt = torch.optim.AdamW(split_model.parameters(), lr=1e-3)
    part1 = dl.train(split_model, images, s, steps=4, batch_size=8, seed=1, progress=False, optimizer=opt)
    part2 = dl.train(split_model, images, s, steps=8, batch_size=8, seed=1, progress=False, optimizer=opt, start_step=4)
    assert part1 + part2 == full
    for p, q in zip(full_model.parameters(), split_model.parameters()):
        assert torch.equal(p, q)


def test_ddpm_loss_of_oracle_is_zero_and_of_zero_model_is_one():
    s = NoiseSchedule.linear()
    x0 = tiny_data()[:16]
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (16,))
    oracle = lambda xt, tt: noise  # noqa: E731
    assert dl.ddpm_loss(oracle, x0, s, t=t, noise=noise).item() == 0.0
    zero = lambda xt, tt: torch.zeros_like(xt)  # noqa: E731
    big = torch.randn(64, 1, 28, 28)
    assert abs(dl.ddpm_loss(zero, big, s).item() - 1.0) < 0.02  # E||eps||^2 / d = 1


def test_ema_warmup_decay():
    model = dl.BasicUNet()
    ema = dl.make_ema(model)
    assert ema.get_decay(1) == 0.0
    assert abs(ema.get_decay(11) - 11 / 20) < 1e-12
    assert ema.get_decay(100_000) == 0.999


def test_train_puts_the_model_in_training_mode_and_says_so():
    model = dl.BasicUNetFixed().eval()
    dl.train(model, tiny_data()[:8], NoiseSchedule.linear(), steps=1, batch_size=2, progress=False)
    assert model.training
    assert "model.train()" in dl.train.__doc__


def test_cosine_lr_falls_from_lr_to_zero_along_half_a_cosine():
    from ddpm_lib.training import cosine_lr
    lr = cosine_lr(2e-3, 400)
    assert lr(0) == 2e-3 and abs(lr(200) - 1e-3) < 1e-15 and lr(400) == 0.0
    assert abs(lr(100) - 1e-3 * (1 + 2 ** -0.5)) < 1e-15 and lr(500) == 0.0  # held at 0 after


def test_a_learning_rate_function_is_applied_at_every_step_and_resumes():
    s = NoiseSchedule.linear(num_timesteps=100)
    images = tiny_data()[:64]

    def run(lr, pieces):
        torch.manual_seed(0)
        model = dl.BasicUNetFixed(num_timesteps=100)
        opt = torch.optim.AdamW(model.parameters(), lr=1.0)  # overwritten by a function lr
        losses = []
        for a, b in pieces:
            losses += dl.train(model, images, s, steps=b, start_step=a, batch_size=8, seed=1, lr=lr,
                               optimizer=opt, progress=False)
        return losses, [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(0)
    init = [p.detach().clone() for p in dl.BasicUNetFixed(num_timesteps=100).parameters()]
    const, w_const = run(lambda step: 1e-3, [(0, 6)])
    plain, w_plain = run(1e-3, [(0, 6)])  # the optimizer's own lr, 1.0: a different run
    assert const != plain
    frozen, w_frozen = run(lambda step: 0.0, [(0, 6)])  # AdamW at lr 0 changes nothing
    assert all(torch.equal(p, q) for p, q in zip(w_frozen, init))
    # a decaying rate, in one piece or resumed in two: the same steps, bit for bit
    from ddpm_lib.training import cosine_lr
    one, w_one = run(cosine_lr(1e-3, 6), [(0, 6)])
    two, w_two = run(cosine_lr(1e-3, 6), [(0, 3), (3, 6)])
    assert one == two and all(torch.equal(p, q) for p, q in zip(w_one, w_two))
    assert one[:2] == const[:2] and one[2:] != const[2:]  # step 0 at the full rate, later ones lower
