"""Who single sign-on lets in, with which role and tenant (monitor/web/sso_policy.py: pure,
no provider), and the settings' checks that keep a policy from letting nobody or everybody in."""

from __future__ import annotations

import pytest

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from monitor.web.routes import Role
from monitor.web.sso_policy import Profile, SsoRefused, admit, groups_of

BASE = {"monitor_sso_provider": "oidc", "monitor_sso_url": "https://idp.example", "monitor_sso_client_id": "c"}


def policy(**values: object) -> Settings:
    return Settings(**BASE, **values)  # type: ignore[arg-type]


def test_an_allowed_domain_lets_its_users_in_with_the_default_role_whatever_the_case():
    settings = policy(monitor_sso_allowed_domains=("Acme.com",))
    admission = admit(settings, Profile("sub-1", emails=("Alice@ACME.com",)))
    assert admission.subject == "alice@acme.com" and admission.role is Role.VIEWER and admission.tenant is None
    with pytest.raises(SsoRefused, match="bob@other.com may not log in"):
        admit(settings, Profile("sub-2", emails=("bob@other.com",)))


def test_a_lookalike_domain_or_a_subdomain_is_not_the_allowed_domain():
    settings = policy(monitor_sso_allowed_domains=("acme.com",))
    for email in ("eve@evilacme.com", "eve@acme.com.evil.net", "eve@sub.acme.com", "acme.com@evil.net"):
        with pytest.raises(SsoRefused):
            admit(settings, Profile("x", emails=(email,)))


def test_allowed_emails_and_the_star_domain():
    assert admit(policy(monitor_sso_allowed_emails=("ann@x.org",)), Profile("a", emails=("ann@x.org",))).role is Role.VIEWER
    assert admit(policy(monitor_sso_allowed_domains=("*",)), Profile("a", emails=("z@any.where",))).subject == "z@any.where"
    with pytest.raises(SsoRefused, match="no verified email"):
        admit(policy(monitor_sso_allowed_domains=("*",)), Profile("no-email"))


def test_groups_emails_and_domains_map_to_roles_and_the_strongest_wins():
    settings = policy(monitor_sso_roles={"ops": "operator", "admins": "admin", "@acme.com": "viewer",
                                         "boss@acme.com": "admin"}, monitor_sso_default_role="viewer")
    # A group alone lets its member in
    assert admit(settings, Profile("g", groups=("ops",))).role is Role.OPERATOR
    assert admit(settings, Profile("g", emails=("o@other.com",), groups=("ops", "admins"))).role is Role.ADMIN
    assert admit(settings, Profile("d", emails=("dev@acme.com",))).role is Role.VIEWER
    assert admit(settings, Profile("b", emails=("BOSS@acme.com",))).role is Role.ADMIN
    with pytest.raises(SsoRefused):
        admit(settings, Profile("n", emails=("n@other.com",), groups=("staff",)))


def test_the_tenant_comes_from_its_claim_else_from_the_first_matching_mapping():
    settings = policy(monitor_sso_allowed_domains=("acme.com", "beta.io"), monitor_sso_tenant_claim="org",
                      monitor_sso_tenants={"vip@acme.com": "vip", "@acme.com": "acme", "team-b": "beta"})
    assert admit(settings, Profile("1", emails=("a@acme.com",), claims={"org": "from-claim"})).tenant == "from-claim"
    assert admit(settings, Profile("2", emails=("vip@acme.com",))).tenant == "vip"
    assert admit(settings, Profile("3", emails=("a@acme.com",), groups=("team-b",))).tenant == "acme"
    assert admit(settings, Profile("4", emails=("b@beta.io",), groups=("team-b",))).tenant == "beta"
    assert admit(settings, Profile("5", emails=("c@beta.io",), claims={"org": ["not", "a", "name"]})).tenant is None


def test_a_groups_claim_of_any_shape_is_read_safely():
    assert groups_of({"groups": ["a", "b", 3, None, {"x": 1}]}, "groups") == ("a", "b", "3")
    assert groups_of({"groups": "solo"}, "groups") == ("solo",)
    assert groups_of({"groups": {"a": 1}}, "groups") == ()
    assert groups_of({"groups": ["a"]}, "") == ()


@pytest.mark.parametrize("values, message", [
    ({"monitor_sso_provider": "saml"}, "oidc or github"),
    ({"monitor_sso_provider": "oidc", "monitor_sso_allowed_domains": ("a.com",)}, "CLIENT_ID"),
    ({**BASE}, "lets nobody in"),
    ({**BASE, "monitor_sso_roles": {"ops": "root"}}, "viewer, operator, admin"),
    ({**BASE, "monitor_sso_allowed_domains": ("a.com",), "monitor_sso_default_role": "god"}, "viewer, operator, admin"),
])
def test_a_single_sign_on_that_would_let_nobody_in_or_name_no_client_is_refused_at_start(values, message):
    with pytest.raises(ConfigError, match=message):
        Settings(**values).resolved()  # type: ignore[arg-type]


def test_roles_and_tenants_are_read_from_the_environment():
    settings = Settings.from_env({"JOBQUEUE_MONITOR_SSO_PROVIDER": "github", "JOBQUEUE_MONITOR_SSO_CLIENT_ID": "id",
                                  "JOBQUEUE_MONITOR_SSO_ROLES": "Fleet Admins=admin, @acme.com=operator",
                                  "JOBQUEUE_MONITOR_SSO_TENANTS": "x@acme.com=x",
                                  "JOBQUEUE_MONITOR_SSO_ALLOWED_DOMAINS": "acme.com,beta.io",
                                  "JOBQUEUE_BROKER_URL": "redis://127.0.0.1:6379/0"})
    assert dict(settings.monitor_sso_roles) == {"Fleet Admins": "admin", "@acme.com": "operator"}
    assert settings.monitor_sso_allowed_domains == ("acme.com", "beta.io")
    with pytest.raises(ConfigError, match="key=value in JOBQUEUE_MONITOR_SSO_ROLES"):
        Settings.from_env({"JOBQUEUE_MONITOR_SSO_ROLES": "admins", "JOBQUEUE_BROKER_URL": "redis://127.0.0.1:6379/0"})
