"""T2 at clinical SNR (10-20): the background noise estimate and the Rician noise-floor model, against
analytic truth (synthetic Rician decays with a known σ)."""
import numpy as np
import pytest

from KneePipelineLib import t2 as T2
from KneePipelineLib.io.volume import Volume
from KneePipelineLib.t2.mese import estimate_noise_sigma, rician_mean

S0 = 1000.0


def _decays(te, snr, seed, shape=(8, 40, 40)):
    """A T2 ramp 20-60 ms inside a background (44 % of the voxels) of pure Rician noise."""
    t2 = np.zeros(shape)
    m = shape[1] // 8
    n = shape[2] - 2 * m
    t2[:, m:shape[1] - m, m:shape[2] - m] = np.linspace(20.0, 60.0, n)[None, None, :]
    rng = np.random.default_rng(seed)
    a = np.where(t2 > 0, S0 * np.exp(-te[:, None, None, None] / np.where(t2 > 0, t2, 1.0)), 0.0)
    sigma = S0 / snr
    img = np.abs(a + sigma * rng.standard_normal(a.shape) + 1j * sigma * rng.standard_normal(a.shape))
    geom = Volume(img[0].astype(np.float32), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    return T2.MultiEcho(img.astype(np.float32), np.asarray(te, float), geom, {}), t2


@pytest.mark.parametrize("snr", [6.0, 10.0, 12.5, 20.0, 50.0, 200.0])
def test_background_noise_estimate_is_unbiased_from_snr_6_to_200(snr):
    """σ = 17 % and 8 % of the signal used to read 0.43 σ and 0.67 σ (the background was cut at a fixed
    10 % of the bright level before the 3σ-truncated moment); now within 3 % everywhere (measured 0.997 σ,
    1.027 σ at SNR 6)."""
    me, _ = _decays(np.array([10.0]), snr, seed=5)
    sigma, how = estimate_noise_sigma(me.images[0])
    assert "Rayleigh" in how and "vendor" not in how
    assert sigma == pytest.approx(S0 / snr, rel=0.03 if snr >= 10 else 0.05)


def test_rician_mean_matches_monte_carlo_and_its_slope_the_finite_difference():
    rng = np.random.default_rng(0)
    sigma = 2.0
    amps = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 30.0, 200.0])
    n = 400000
    noise = sigma * (rng.standard_normal((n, 1)) + 1j * rng.standard_normal((n, 1)))
    mc = np.abs(amps[None, :] + noise).mean(axis=0)
    mean, slope = rician_mean(amps, sigma)
    # Monte Carlo standard error ~ sigma / sqrt(n) = 0.003
    assert np.allclose(mean, mc, atol=0.012), (mean, mc)
    assert mean[0] == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=1e-12)
    assert mean[-1] == pytest.approx(np.sqrt(200.0 ** 2 + sigma ** 2), rel=1e-6)
    h = 1e-5
    fd = (rician_mean(amps + h, sigma)[0] - rician_mean(np.maximum(amps - h, 0), sigma)[0]) / (
        amps + h - np.maximum(amps - h, 0))
    assert np.allclose(slope, fd, rtol=1e-4, atol=1e-5)
    # no noise: the model is the amplitude itself
    m0, s0 = rician_mean(amps, 0.0)
    assert np.array_equal(m0, amps) and np.all(s0 == 1.0)


@pytest.mark.parametrize("snr,tol_pct", [(10.0, 1.5), (15.0, 0.8), (20.0, 0.8)])
def test_mese_t2_is_unbiased_at_snr_10_to_20(snr, tol_pct):
    """8 echoes 10-80 ms, T2 20-60 ms, σ estimated from the background. Median relative error of the
    refined fit, measured: -0.8 % (SNR 10), -0.1 % (15), -0.1 % (20). The log-linear fit reads +30/+15/+9 %;
    the sqrt(A² + 2σ²) floor model -6.8/-3.4/-2.1 %; a σ low by a factor sqrt(2) +4.8/+2.4/+1.4 %."""
    te = np.arange(1, 9) * 10.0
    me, truth = _decays(te, snr, seed=1)
    maps = T2.fit_mese(me, drop_first_echo=False, r2_min=0.0)
    roi = truth > 0
    rel = (maps.t2_ms.array[roi] - truth[roi]) / truth[roi]
    assert np.isfinite(rel).mean() > 0.97
    med = 100.0 * float(np.nanmedian(rel))
    print("SNR %g: median relative T2 error %+.2f %%, sigma %.1f (truth %.1f)"
          % (snr, med, maps.params["noise_sigma"], S0 / snr))
    assert abs(med) <= tol_pct
    assert maps.params["noise_sigma"] == pytest.approx(S0 / snr, rel=0.03)
    # short T2 (the last echoes in the floor) too: the band 20-30 ms
    short = (truth[roi] < 30)
    assert abs(100.0 * float(np.nanmedian(rel[short]))) <= 2 * tol_pct


def test_loglinear_fit_weights_by_signal_squared():
    """The log of a noisy signal has variance ~ σ²/S²: weighting by S² makes the closed-form fit the
    efficient one. SNR 100, no refinement: median |relative error| 1.5 % weighted, 2.3 % unweighted."""
    te = np.arange(1, 9) * 10.0
    me, truth = _decays(te, 100.0, seed=2)
    maps = T2.fit_mese(me, drop_first_echo=False, refine=False, r2_min=0.0)
    roi = truth > 0
    rel = (maps.t2_ms.array[roi] - truth[roi]) / truth[roi]
    assert 100.0 * float(np.nanmedian(np.abs(rel))) <= 1.8
    assert abs(100.0 * float(np.nanmedian(rel))) <= 1.0
