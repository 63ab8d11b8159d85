"""Config loading: the documented example, ${VAR} expansion, and errors that name every key path."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcsync.cli import main
from mcsync.config.load import config_file_is_private, default_config_path, load_config
from mcsync.config.models import Config, SyncConfig
from mcsync.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
# Distinctive fake secrets: if any of these shows up in a message, a secret leaked.
MC_KEY = "f00dfacecafebabe0123456789abcdef-us21"
CIVI_KEY = "civi-secret-Zq8XwV3pL"
SITE_KEY = "site-secret-Hm2Kt7Rb"
ENV = {"MAILCHIMP_API_KEY": MC_KEY, "CIVICRM_API_KEY": CIVI_KEY, "CIVICRM_SITE_KEY": SITE_KEY}

MINIMAL = """
[civicrm]
url = "https://crm.example.org/civicrm/ajax/api4"
api_key = "${CIVICRM_API_KEY}"
timezone = "UTC"

[mailchimp.accounts.main]
api_key = "${MAILCHIMP_API_KEY}"
"""

AUDIENCE = """
[[audience]]
account = "main"
list_id = "{list_id}"
group_id = {group_id}
"""


def write(tmp_path: Path, text: str, name: str = "mcsync.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, ENV if environ is None else environ)
    return caught.value.problems


def test_example_loads_and_means_what_it_says() -> None:
    config = load_config(EXAMPLE, ENV)
    assert config.state_db == EXAMPLE.parent / "mcsync.sqlite3"
    assert config.civicrm.api_key.get_secret_value() == CIVI_KEY
    assert config.civicrm.endpoint("Contact", "get") == (
        "https://crm.example.org/civicrm/ajax/api4/Contact/get"
    )
    assert str(config.civicrm.tzinfo) == "Europe/London"
    account = config.mailchimp.accounts["main"]
    assert account.data_centre == "us21"
    assert account.api_root() == "https://us21.api.mailchimp.com/3.0"
    (audience,) = config.audience
    assert (audience.account, audience.list_id, audience.group_id) == ("main", "a1b2c3d4e5", 12)
    assert audience.interests == {"9f8e7d6c5b": 34, "0a1b2c3d4e": 35}
    assert audience.merge_fields["FNAME"] == "first_name"
    assert config.audience_for_group(12) is audience
    assert sorted(config.secrets()) == sorted([MC_KEY, CIVI_KEY, SITE_KEY])


def test_sync_defaults_match_the_example() -> None:
    """The example documents the defaults; it must not drift from the code."""
    assert load_config(EXAMPLE, ENV).sync == SyncConfig()


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), ENV)
    assert config.audience == []
    assert config.civicrm.site_key is None
    assert config.sync.batch_threshold == 1000
    assert config.sync.max_connections == 10
    assert config.sync.max_removal_share == pytest.approx(0.10)


def test_civicrm_write_chunk_defaults_large_and_refuses_nonsense(tmp_path: Path) -> None:
    """Records per CiviCRM save: 2500 unless set (APIv4 save has no record limit; issue 12),
    any positive size up to 10000 for a small or slow server."""
    assert load_config(write(tmp_path, MINIMAL), ENV).civicrm.write_chunk == 2500
    text = MINIMAL.replace('timezone = "UTC"', 'timezone = "UTC"\nwrite_chunk = 200')
    assert load_config(write(tmp_path, text), ENV).civicrm.write_chunk == 200
    for bad in ("0", "10001"):
        text = MINIMAL.replace('timezone = "UTC"', f'timezone = "UTC"\nwrite_chunk = {bad}')
        (problem,) = problems_of(write(tmp_path, text))
        assert problem.startswith("civicrm.write_chunk:"), problem


def test_variable_expansion_and_dollar_escape(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + AUDIENCE.format(list_id="${LIST}", group_id='"${GROUP}"'))
    text = path.read_text().replace('api_key = "${CIVICRM_API_KEY}"', 'api_key = "p$$w${CIVI}x"')
    path.write_text(text + 'name = "costs $$5 and ${A}$B"\n')
    env = {**ENV, "LIST": "abc123", "GROUP": "7", "CIVI": "ord", "A": "${B}"}
    config = load_config(path, env)
    assert config.civicrm.api_key.get_secret_value() == "p$wordx"
    assert config.audience[0].list_id == "abc123"
    assert config.audience[0].group_id == 7
    # One pass only: a value containing ${...} is not expanded again; a bare $ is literal.
    assert config.audience[0].name == "costs $5 and ${B}$B"


def test_missing_variable_names_key_and_variable(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, MINIMAL), {"MAILCHIMP_API_KEY": MC_KEY})
    assert problems == ["civicrm.api_key: environment variable CIVICRM_API_KEY is not set"]


def test_bad_variable_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, 'state_db = "${1X}"\n' + MINIMAL)
    assert problems_of(path) == ["state_db: ${1X} is not a valid environment variable name"]
    path.write_text('state_db = "a${B"\n' + MINIMAL)
    assert problems_of(path) == ["state_db: unterminated ${ (write $$ for a literal dollar sign)"]


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    text = MINIMAL.replace('api_key = "${CIVICRM_API_KEY}"', 'api_kye = "${CIVICRM_API_KEY}"')
    text = "batch_threshold = 5\n" + text + "[sync]\nmax_conections = 4\nfrobnicate = 1\n"
    problems = problems_of(write(tmp_path, text))
    assert 'civicrm.api_kye: unknown key; did you mean "api_key"?' in problems
    assert 'sync.max_conections: unknown key; did you mean "max_connections"?' in problems
    assert any(p.startswith("sync.frobnicate: unknown key; valid keys here: ") for p in problems)
    assert "batch_threshold: unknown key here; batch_threshold belongs in [sync]" in problems


def test_every_missing_key_is_listed_with_its_path(tmp_path: Path) -> None:
    text = """
        [civicrm]
        timezone = "UTC"

        [[audience]]
        account = "main"
        list_id = "abc"
        group_id = 3

        [[audience]]
        account = "main"
    """
    problems = problems_of(write(tmp_path, text))
    paths = [problem.split(":", 1)[0] for problem in problems]
    assert paths == [
        "civicrm.url",
        "civicrm.api_key",
        "mailchimp",
        "audience[1].list_id",
        "audience[1].group_id",
    ]
    assert "add group_id = 12" in problems[4]
    assert "[mailchimp.accounts.<name>]" in problems[2]
    assert all("required" in problem for problem in problems)


def test_empty_mailchimp_table(tmp_path: Path) -> None:
    text = MINIMAL.split("[mailchimp")[0] + "[mailchimp]\n"
    assert problems_of(write(tmp_path, text)) == [
        "mailchimp.accounts: required table is missing; add a [mailchimp.accounts.<name>] table"
    ]
    text += "accounts = {}\n"
    assert problems_of(write(tmp_path, text)) == [
        "mailchimp.accounts: is empty; add a [mailchimp.accounts.<name>] table for each API key"
    ]


def test_single_bracket_audience_is_explained(tmp_path: Path) -> None:
    text = MINIMAL + '[audience]\naccount = "main"\nlist_id = "x"\ngroup_id = 4\n'
    (problem,) = problems_of(write(tmp_path, text))
    assert problem.startswith("audience: must be a list of tables") and "[[audience]]" in problem


def test_timezone_is_required(tmp_path: Path) -> None:
    """Issue 10.9: a silent UTC default read a New York site's dates 5 hours off, and the
    wrong side won conflicts. The zone must be said."""
    path = write(tmp_path, MINIMAL.replace('timezone = "UTC"\n', ""))
    (problem,) = problems_of(path)
    assert problem.startswith(
        'civicrm.timezone: required key is missing; add timezone = "Europe/London"'
    )
    assert "IANA" in problem and "config check" in problem
    result = CliRunner().invoke(main, ["status", "--config", str(path)], env=ENV)
    assert result.exit_code == 2
    assert "civicrm.timezone: required key is missing" in result.output


def test_timezone_names_the_zone(tmp_path: Path) -> None:
    text = MINIMAL.replace('timezone = "UTC"', 'timezone = "America/New_York"')
    assert str(load_config(write(tmp_path, text), ENV).civicrm.tzinfo) == "America/New_York"


def test_bad_timezone_names_key_and_suggests(tmp_path: Path) -> None:
    text = MINIMAL.replace('timezone = "UTC"', 'timezone = "Europe/Londn"')
    (problem,) = problems_of(write(tmp_path, text))
    assert problem.startswith("civicrm.timezone: unknown time zone")
    assert "Europe/London" in problem


@pytest.mark.parametrize("key", ["abcdef0123456789", "abcdef-", "abc-us"])
def test_mailchimp_key_needs_data_centre(tmp_path: Path, key: str) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL), {**ENV, "MAILCHIMP_API_KEY": key})
    assert problem.startswith("mailchimp.accounts.main.api_key: does not end with a data centre")
    assert key not in problem


def test_base_url_overrides_data_centre(tmp_path: Path) -> None:
    text = MINIMAL + 'base_url = "http://127.0.0.1:8010/3.0/"\n'
    config = load_config(write(tmp_path, text), {**ENV, "MAILCHIMP_API_KEY": "simkey"})
    account = config.mailchimp.accounts["main"]
    assert account.api_root() == "http://127.0.0.1:8010/3.0"
    assert account.data_centre is None


def test_key_whitespace_is_stripped(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), {**ENV, "MAILCHIMP_API_KEY": MC_KEY + "\n"})
    assert config.mailchimp.accounts["main"].api_key.get_secret_value() == MC_KEY


def test_relative_state_db_resolves_against_config_dir(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", 'state_db = "var/state.db"\n' + MINIMAL)
    assert load_config(path, ENV).state_db == tmp_path / "etc" / "var" / "state.db"
    path.write_text(f'state_db = "{tmp_path}/abs.db"\n' + MINIMAL)
    assert load_config(path, ENV).state_db == tmp_path / "abs.db"


def test_url_template(tmp_path: Path) -> None:
    template = "https://wp.example.org/wp-admin/admin.php?page=CiviCRM&q=civicrm/ajax/api4/"
    url = template + "{entity}/{action}"
    text = MINIMAL.replace("https://crm.example.org/civicrm/ajax/api4", url)
    civicrm = load_config(write(tmp_path, text), ENV).civicrm
    assert civicrm.is_template
    assert civicrm.endpoint("GroupContact", "get") == template + "GroupContact/get"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://wp.example.org/?q=civicrm/ajax/api4/{entity}/get", "needs both {entity} and"),
        ("https://wp.example.org/?q=civicrm/ajax/api4/{Entity}/{action}", "placeholder {Entity}"),
        ("crm.example.org/civicrm/ajax/api4", "http:// or https://"),
        ("https://user:pw@crm.example.org/civicrm/ajax/api4", "user name or password"),
    ],
)
def test_bad_civicrm_urls(tmp_path: Path, url: str, fragment: str) -> None:
    text = MINIMAL.replace("https://crm.example.org/civicrm/ajax/api4", url)
    (problem,) = problems_of(write(tmp_path, text))
    assert problem.startswith("civicrm.url: ") and fragment in problem


def test_path_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    text = MINIMAL.replace("/api4", "/api4/")
    assert (
        load_config(write(tmp_path, text), ENV)
        .civicrm.endpoint("Group", "get")
        .endswith("/api4/Group/get")
    )


def test_audience_values_are_checked(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + AUDIENCE.format(list_id="", group_id=0)
        + textwrap.dedent(
            """
        [audience.interests]
        "abc" = -1
        [audience.merge_fields]
        fname = "first_name"
        LONGERTHAN10 = "last_name"
        CITY = "address primary city"
        EMAIL = "email_primary.email"
        COUNTRY = "address_primary.country_id:label"
        """
        )
    )
    problems = problems_of(write(tmp_path, text))
    paths = sorted(problem.split(":", 1)[0] for problem in problems)
    assert paths == sorted(
        [
            "audience[0].list_id",
            "audience[0].group_id",
            "audience[0].interests.abc",
            "audience[0].merge_fields.fname",
            "audience[0].merge_fields.LONGERTHAN10",
            "audience[0].merge_fields.CITY",
            "audience[0].merge_fields.EMAIL",
        ]
    )
    assert any('did you mean "FNAME"?' in problem for problem in problems)


def test_duplicate_groups_lists_and_unknown_account(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + AUDIENCE.format(list_id="L1", group_id=12)
        + '[audience.interests]\n"i1" = 12\n"i2" = 30\n"i3" = 30\n'
        + AUDIENCE.format(list_id="L1", group_id=12)
        + AUDIENCE.format(list_id="L2", group_id=13).replace('"main"', '"mian"')
    )
    problems = problems_of(write(tmp_path, text))
    assert sorted(problems) == sorted(
        [
            "audience[0].interests.i1: group 12 is this audience's subscription group "
            "(group_id); an interest needs a group of its own",
            "audience[0].interests.i3: group 30 is already mapped to interest i2; "
            "each interest needs a group of its own",
            "audience[1].group_id: group 12 is already the group of audience[0]; "
            "each audience needs its own group",
            "audience[1].list_id: audience L1 of account main is already configured as audience[0]",
            'audience[2].account: no [mailchimp.accounts.mian] table; did you mean "main"? '
            "configured accounts: main",
        ]
    )


def test_cross_checks_also_guard_direct_construction() -> None:
    account = {"api_key": MC_KEY}
    audience = {"account": "main", "list_id": "L1", "group_id": 5}
    with pytest.raises(ValueError, match="already the group of audience"):
        Config.model_validate(
            {
                "civicrm": {
                    "url": "https://crm.example.org",
                    "api_key": CIVI_KEY,
                    "timezone": "UTC",
                },
                "mailchimp": {"accounts": {"main": account}},
                "audience": [audience, {**audience, "list_id": "L2"}],
            }
        )


def test_audience_for_group_and_overrides(tmp_path: Path) -> None:
    text = MINIMAL + AUDIENCE.format(list_id="L1", group_id=12) + "sync_tags = true\n"
    text += AUDIENCE.format(list_id="L2", group_id=14)
    config = load_config(write(tmp_path, text), ENV)
    first, second = config.audience
    assert config.settings_for(first).sync_tags is True
    assert config.settings_for(second).sync_tags is False
    assert config.settings_for(first).batch_threshold == 1000
    with pytest.raises(ConfigError) as caught:
        config.audience_for_group(99)
    assert "99" in str(caught.value) and "12, 14" in str(caught.value)


def test_sync_ranges(tmp_path: Path) -> None:
    text = MINIMAL + "[sync]\nmax_connections = 11\nmax_removal_share = 1.5\nbatch_threshold = 0\n"
    paths = sorted(p.split(":", 1)[0] for p in problems_of(write(tmp_path, text)))
    assert paths == ["sync.batch_threshold", "sync.max_connections", "sync.max_removal_share"]


def test_secrets_never_appear(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, ENV)
    shown = [repr(config), str(config), config.model_dump_json(), repr(config.civicrm)]
    for secret in (MC_KEY, CIVI_KEY, SITE_KEY):
        assert all(secret not in text for text in shown)

    # Secrets in wrong places and wrong shapes: no message may echo them.
    text = MINIMAL + 'api_kee = "${CIVICRM_API_KEY}"\n'
    wrong = 'site_key = ["${CIVICRM_SITE_KEY}"]\ntimezone = "${CIVICRM_API_KEY}"\n'
    text = text.replace('timezone = "UTC"\n', wrong, 1)
    bad_env = {**ENV, "MAILCHIMP_API_KEY": "Zz9-" + CIVI_KEY}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), bad_env)
    messages = [str(caught.value), repr(caught.value), *caught.value.problems]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert len(caught.value.problems) == 4
    assert 'civicrm.timezone: unknown time zone "[redacted]"' in str(caught.value)
    for secret in (MC_KEY, CIVI_KEY, SITE_KEY, "Zz9-"):
        assert all(secret not in message for message in messages)


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, 'x = 1\n[civicrm\nurl = "a"\n'))
    assert "TOML syntax error" in problem and "line 2" in problem and "column" in problem


def test_missing_file_directory_and_unreadable(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.toml")
    assert "nope.toml: no such file" in problem
    (problem,) = problems_of(tmp_path)
    assert "is a directory" in problem
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read anything (root)")
        (problem,) = problems_of(path)
        assert "cannot read" in problem
    finally:
        path.chmod(0o600)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = write(tmp_path, MINIMAL)
    monkeypatch.setattr(Path, "open", refuse)
    (problem,) = problems_of(path)
    assert problem == f"{path}: cannot read the file (permission denied)"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    (problem,) = problems_of(path)
    assert "UTF-8" in problem


def test_default_config_path() -> None:
    assert default_config_path({}) == Path("mcsync.toml")
    assert default_config_path({"MCSYNC_CONFIG": "/etc/mcsync.toml"}) == Path("/etc/mcsync.toml")


def test_config_file_is_private(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0o600)
    assert config_file_is_private(path)
    path.chmod(0o640)
    assert not config_file_is_private(path)
    path.chmod(0o604)
    assert not config_file_is_private(path)


# -- TLS for remote hosts (issue 11, point 5) ---------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8011/civicrm/ajax/api4",
        "http://127.8.9.10/civicrm/ajax/api4",
        "http://[::1]:8011/civicrm/ajax/api4",
        "http://localhost/civicrm/ajax/api4",
        "http://LOCALHOST:8011/civicrm/ajax/api4",
        "https://crm.example.org/civicrm/ajax/api4",
    ],
)
def test_plain_http_is_accepted_for_loopback_only(tmp_path: Path, url: str) -> None:
    text = MINIMAL.replace("https://crm.example.org/civicrm/ajax/api4", url)
    config = load_config(write(tmp_path, text), ENV)
    assert config.insecure_urls() == []


@pytest.mark.parametrize(
    ("table", "url", "host"),
    [
        ("civicrm", "http://crm.example.org/civicrm/ajax/api4", "crm.example.org"),
        ("civicrm", "http://10.0.0.5/civicrm/ajax/api4", "10.0.0.5"),
        ("civicrm", "http://0.0.0.0:8011/civicrm/ajax/api4", "0.0.0.0"),
        ("civicrm", "http://localhost.example.org/civicrm/ajax/api4", "localhost.example.org"),
        ("civicrm", "http://wp.example.org/?q=civicrm/ajax/api4/{entity}/{action}", "wp.example"),
        ("mailchimp.accounts.main", "http://proxy.example.org/3.0", "proxy.example.org"),
    ],
)
def test_plain_http_to_a_remote_host_is_refused_unless_allowed(
    tmp_path: Path, table: str, url: str, host: str
) -> None:
    if table == "civicrm":
        text = MINIMAL.replace("https://crm.example.org/civicrm/ajax/api4", url)
        key = "civicrm.url"
    else:
        text = MINIMAL + f'base_url = "{url}"\n'
        key = "mailchimp.accounts.main.base_url"
    (problem,) = problems_of(write(tmp_path, text))
    assert problem.startswith(f"{key}: "), problem
    assert host in problem and "unencrypted" in problem and "allow_insecure_http" in problem

    # Allowed explicitly, in the table the URL is in: it loads, and says so.
    allowed = text.replace(f"[{table}]\n", f"[{table}]\nallow_insecure_http = true\n", 1)
    config = load_config(write(tmp_path, allowed), ENV)
    (warning,) = config.insecure_urls()
    assert warning.startswith(f"{key}: ") and host in warning
