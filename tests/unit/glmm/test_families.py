"""Families and links: inverses, derivatives, deviances and log-likelihoods against scipy.stats."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from memoe.errors import MemoeError
from memoe.glmm.families import Binomial, FamilyError, Poisson, get_family, get_link


@pytest.mark.parametrize("name", ["logit", "probit", "cloglog", "log", "identity"])
def test_link_inverse_and_derivative(name):
    link = get_link(name)
    eta = np.linspace(-3, -0.2, 7) if name == "log" else np.linspace(-3, 3, 7)
    if name == "identity":
        eta = np.linspace(0.1, 0.9, 7)
    if name == "cloglog":  # 1 - mu underflows relative precision beyond eta ~ 2
        eta = np.linspace(-3, 1.5, 7)
    mu = link.linkinv(eta)
    np.testing.assert_allclose(link.linkfun(mu), eta, rtol=1e-10, atol=1e-10)
    h = 1e-6
    numeric = (link.linkinv(eta + h) - link.linkinv(eta - h)) / (2 * h)
    np.testing.assert_allclose(link.mu_eta(eta), numeric, rtol=1e-6)


def test_binomial_loglik_and_deviance():
    fam = Binomial()
    n = np.array([5.0, 10.0, 3.0, 8.0])
    k = np.array([0.0, 4.0, 3.0, 2.0])
    mu = np.array([0.2, 0.5, 0.7, 0.1])
    y = k / n
    assert fam.loglik(y, mu, n, n) == pytest.approx(stats.binom.logpmf(k, n, mu).sum(), rel=1e-12)
    # unit deviance = 2 (log p(y | mu = y) - log p(y | mu)), summed
    sat = stats.binom.logpmf(k, n, y).sum()
    assert fam.dev_resids(y, mu, n).sum() == pytest.approx(2 * (sat - stats.binom.logpmf(k, n, mu).sum()), rel=1e-10)


def test_poisson_loglik_and_deviance():
    fam = Poisson()
    y = np.array([0.0, 1.0, 4.0, 10.0])
    mu = np.array([0.5, 2.0, 3.5, 12.0])
    w = np.ones(4)
    assert fam.loglik(y, mu, w, w) == pytest.approx(stats.poisson.logpmf(y, mu).sum(), rel=1e-12)
    sat = stats.poisson.logpmf(y, np.maximum(y, 1e-300)).sum()
    assert fam.dev_resids(y, mu, w).sum() == pytest.approx(2 * (sat - stats.poisson.logpmf(y, mu).sum()), rel=1e-10)


def test_get_family():
    assert isinstance(get_family("binomial"), Binomial)
    assert isinstance(get_family("Poisson"), Poisson)
    assert get_family("binomial", link="probit").link.name == "probit"
    assert str(get_family("poisson")) == "poisson ( log )"
    with pytest.raises(FamilyError, match="unknown family 'weibull'"):
        get_family("weibull")
    with pytest.raises(MemoeError, match=r"memoe\.lmm"):
        get_family("gaussian")
    with pytest.raises(MemoeError, match="not available for the poisson"):
        get_family("poisson", link="logit")
    with pytest.raises(MemoeError, match="unknown link"):
        get_link("cauchit")
    with pytest.raises(FamilyError, match="must be a name"):
        get_family(3)
    # one class to catch: memoe's base error, and a ValueError as for any bad argument
    assert issubclass(FamilyError, MemoeError) and issubclass(FamilyError, ValueError)
