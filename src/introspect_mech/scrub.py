"""One secret scrubber, for what describes a run -- never for what a run produced.

Applied to provenance, manifests, the dashboard's run description and every error message; never
to result rows or data (a prompt that mentions an environment variable's value comes back intact).

What is a secret, by value:
- the value of every environment variable the run was told holds a key (`register_secret_env`, e.g.
  a judge's `--api-key-env`), and of variables whose NAME says it is a key (`*_API_KEY`, `*_TOKEN`,
  `*_SECRET`, `*PASSWORD*`, ...: a suffix rule, so `GIT_AUTHOR_NAME` is not one);
- URL userinfo (`https://user:pass@host`);
- every URL query parameter and fragment parameter whose name looks like a credential (`api-key`,
  `x-api-key`, `client_secret`, `token`, `sig`, ...) or whose value looks like a key;
- URL path segments that look like keys (a known key prefix, or a long mixed-case-and-digit string);
- `Bearer <x>` / `Basic <x>` (an Authorization header echoed in an error), and key-shaped words
  (`sk-...`, `hf_...`, `ghp_...`).

By name, in structured descriptions (`scrub_obj`): fields named like credentials are redacted and
`*_env` fields must hold a variable NAME (a pasted key there is redacted).
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

REDACTED = "<redacted>"

# Field names that hold credentials. A bare `token` (or `top_token`, `next_token`, ...) is NOT one: result
# rows of an interpretability run name vocabulary tokens so; only known credential-token names are.
_SECRET_KEY = re.compile(r"(api[_-]?key|(^|_)(access|auth|api|bearer|hf|hub|refresh|session|github|gh|openai|"
                         r"secret|private)[_-]?token$|secret|password|passwd|authorization|credential)", re.IGNORECASE)
# Environment variable names that hold keys: by suffix (or whole name), so GIT_AUTHOR_NAME / TOKENIZERS_PARALLELISM
# / KEYBOARD are not secrets.
_SECRET_ENV = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|SECRET_KEY|ACCESS_KEY|PASSWORD|PASSWD|PASS|CREDENTIALS?|"
                         r"AUTH_TOKEN)$|^(HF_TOKEN|HUGGING_FACE_HUB_TOKEN|OPENAI_API_KEY|ANTHROPIC_API_KEY|"
                         r"GITHUB_TOKEN|GH_TOKEN)$", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# URL query / fragment parameter names that carry credentials
_CRED_PARAM = re.compile(r"(key|token|secret|passw|pwd|auth|sig|signature|credential|session|code|bearer|jwt|"
                         r"access|private)", re.IGNORECASE)
_KEY_LIKE = re.compile(r"^(sk-|sk_|pk-|rk-|hf_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abp]-|AKIA|AIza)[A-Za-z0-9_\-]{6,}")
_KEY_WORD = re.compile(r"(?<![A-Za-z0-9_\-])(sk-|sk_|hf_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abp]-|AKIA|AIza)"
                       r"[A-Za-z0-9_\-]{16,}")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>`]+")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s?#]+)@")
_KEY_QUERY = re.compile(r"(?P<name>[?&;#](?:[A-Za-z0-9_.-]*(?:api[_-]?key|key|token|secret|sig|signature|"
                        r"password|auth|code|credential)[A-Za-z0-9_.-]*)=)(?P<value>[^&#\s\"'<>]+)", re.IGNORECASE)
_KEY_SEGMENT = re.compile(r"(api[_-]?)?keys?|tokens?|secrets?|passwords?", re.IGNORECASE)
_AUTH_HEADER = re.compile(r"(?P<name>\b(?:Bearer|Basic|Token)\s+)(?P<value>[A-Za-z0-9._~+/=\-]{8,})")

_registered: set[str] = set()


def register_secret_env(*names: str | None) -> None:
    """Declare environment variables that hold keys for this process (e.g. `--api-key-env`).

    Their values are scrubbed from every description and message from now on.

    Args:
        *names: variable names (None / empty ignored).
    """
    _registered.update(n for n in names if n)


def secret_env_names(extra_env: Iterable[str] = ()) -> set[str]:
    """Names of the environment variables whose values are secrets.

    Args:
        extra_env: further names (e.g. a judge's `api_key_env`).

    Returns:
        Registered names, `extra_env`, and variables whose name says they hold a key.
    """
    return {k for k in os.environ if _SECRET_ENV.search(k)} | _registered | {e for e in extra_env if e}


def secret_values(extra_env: Iterable[str] = ()) -> set[str]:
    """Values of the environment variables that hold credentials.

    Args:
        extra_env: further variable names whose values are secrets (e.g. a judge's `api_key_env`).

    Returns:
        The set of secret strings (values of 8 characters or more, not paths).
    """
    return {v for k in secret_env_names(extra_env)
            if len(v := os.environ.get(k, "")) >= 8 and not v.startswith(("/", "~", "."))}


def looks_like_secret(value: str) -> bool:
    """Whether a string looks like a credential itself.

    Args:
        value: the string (surrounding whitespace ignored).

    Returns:
        True for a known key prefix (`sk-`, `hf_`, `ghp_`, `AKIA`, ...) followed by at least 6 key
        characters, or a long (>= 24) token mixing upper case, lower case and digits (hex digests
        and words are not).
    """
    v = value.strip()
    if _KEY_LIKE.match(v):
        return True
    return (len(v) >= 24 and re.fullmatch(r"[A-Za-z0-9_\-+/=.]+", v) is not None and any(c.isupper() for c in v)
            and any(c.islower() for c in v) and any(c.isdigit() for c in v))


def _scrub_params(text: str, sep: str) -> str:
    if "=" not in text:
        return REDACTED if text and looks_like_secret(text) else text
    parts = []
    for name, value in parse_qsl(text, keep_blank_values=True):
        if value and (_CRED_PARAM.search(name) or looks_like_secret(value)):
            value = REDACTED
        parts.append(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~<>')}" if value != REDACTED
                     else f"{quote(name, safe='-_.~')}={REDACTED}")
    return sep.join(parts)


def scrub_url(url: str) -> str:
    """A URL with userinfo, credential query/fragment parameters and key-like path segments redacted.

    Args:
        url: the URL.

    Returns:
        The URL, its credentials replaced by `<redacted>`.
    """
    try:
        u = urlsplit(url)
    except ValueError:
        return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", url)
    netloc = u.netloc
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rsplit("@", 1)[1]
    segs = u.path.split("/")
    for i, s in enumerate(segs):
        after_key = i > 0 and _KEY_SEGMENT.fullmatch(segs[i - 1]) is not None  # .../key/<the key>
        if s and (looks_like_secret(s) or after_key):
            segs[i] = REDACTED
    query = _scrub_params(u.query, "&") if u.query else u.query
    frag = _scrub_params(u.fragment, "&") if u.fragment else u.fragment
    return urlunsplit((u.scheme, netloc, "/".join(segs), query, frag))


def scrub_text(s: str, secrets: Iterable[str] | None = None) -> str:
    """Redact secrets from a description or message (never apply this to results).

    Args:
        s: the text.
        secrets: literal secret values to replace (default: `secret_values()`).

    Returns:
        `s` with secret values, URL credentials, Authorization values and key-shaped words replaced
        by `"<redacted>"`.
    """
    for v in sorted(set(secret_values() if secrets is None else secrets), key=len, reverse=True):
        if v and v in s:
            s = s.replace(v, REDACTED)
    s = _URL.sub(lambda m: scrub_url(m.group(0)), s)
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", s)
    s = _KEY_QUERY.sub(lambda m: f"{m['name']}{REDACTED}" if m["value"] != REDACTED else m.group(0), s)
    s = _AUTH_HEADER.sub(lambda m: f"{m['name']}{REDACTED}", s)
    s = _KEY_WORD.sub(REDACTED, s)
    return s


def _env_field_value(v: Any) -> Any:
    """Values of `*_env` fields must be variable NAMES; anything else (a pasted key) is redacted."""
    if not isinstance(v, str):
        return v
    if _ENV_NAME.match(v) and not looks_like_secret(v) and (v in os.environ or len(v) < 32):
        return v
    return REDACTED


def env_names(obj: Any) -> list[str]:
    """Names given in `*_env` fields anywhere in `obj` (their values are secrets too).

    Args:
        obj: nested dicts / lists.

    Returns:
        The names, in order.
    """
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).endswith("_env") and isinstance(v, str) and _ENV_NAME.match(v):
                out.append(v)
            else:
                out += env_names(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += env_names(v)
    return out


def scrub_obj(obj: Any, secrets: set[str] | None = None) -> Any:
    """Scrub a run description (manifest, binding, provenance event) by field name and by value.

    Args:
        obj: nested dicts / lists / strings.
        secrets: the secret values (default: from the environment and `obj`'s `*_env` fields).

    Returns:
        A scrubbed copy (tuples become lists).
    """
    if secrets is None:
        secrets = secret_values(env_names(obj))
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            ks = str(k)
            if ks.endswith("_env"):
                out[k] = _env_field_value(v)
            elif _SECRET_KEY.search(ks):
                out[k] = REDACTED
            else:
                out[k] = scrub_obj(v, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [scrub_obj(v, secrets) for v in obj]
    if isinstance(obj, str):
        return scrub_text(obj, secrets)
    return obj


def scrub_message(msg: str) -> str:
    """An error message with every secret redacted (the CLI applies this to everything it prints on error).

    Args:
        msg: the message.

    Returns:
        The scrubbed message.
    """
    return scrub_text(msg)
