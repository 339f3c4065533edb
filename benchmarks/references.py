"""Published scores (reference_scores.toml, beside this file) and how an env id finds them."""

import re
import tomllib
from pathlib import Path

REFERENCES_FILE = Path(__file__).resolve().parent / "reference_scores.toml"
# Human-normalized scores use the Nature DQN table unless a suite names another (`normalizer`).
DEFAULT_NORMALIZER = "normalizers.atari"


def load_references(path: Path = REFERENCES_FILE) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


ATARI_ID = re.compile(r"^(?:ALE/)?([A-Z][A-Za-z]*?)(?:NoFrameskip|Deterministic)?-v\d+$")
MINATAR_ID = re.compile(r"^([A-Za-z]+)-MinAtar$")
# Games the reference file knows; lets a bare "Pong-v5" count as Atari.
ATARI_GAMES = {"Breakout", "Pong", "BeamRider", "Enduro", "Qbert", "Seaquest", "SpaceInvaders"}


def env_family(env_id: str) -> tuple:
    """(family, key) under which reference tables list an env: ('atari', 'Breakout') for
    BreakoutNoFrameskip-v4 / ALE/Breakout-v5, ('minatar', 'Breakout') for Breakout-MinAtar, else
    ('gymnasium', env_id)."""
    m = MINATAR_ID.match(env_id)
    if m:
        return "minatar", m.group(1)
    m = ATARI_ID.match(env_id)
    if m and (
        env_id.startswith("ALE/") or "NoFrameskip" in env_id or "Deterministic" in env_id or m.group(1) in ATARI_GAMES
    ):
        return "atari", m.group(1)
    return "gymnasium", env_id


def find_reference(references: dict, script: str, env_id: str):
    """The published score for this script on this env (dict with the table's source, protocol,
    budget and rule merged in), or None."""
    family, key = env_family(env_id)
    # `tables` first; the complete Atari-57 tables (`atari57`) for the games those lack.
    for table_id, table in [*references.get("tables", {}).items(), *references.get("atari57", {}).items()]:
        if (
            script in table.get("scripts", [])
            and table.get("family") == family
            and "score" in table["scores"].get(key, {})
        ):
            entry = dict(table["scores"][key])
            meta = {k: v for k, v in table.items() if k != "scores"}
            return {**meta, **entry, "table": table_id, "key": key}
    return None


def normalizer_table(references: dict, name: str = DEFAULT_NORMALIZER) -> dict:
    """The table of random and human scores that `name` ("<section>.<table>", a suite's `normalizer`) names."""
    section, _, table_id = name.partition(".")
    return references.get(section, {}).get(table_id, {})


def find_normalizer(references: dict, env_id: str, name: str = DEFAULT_NORMALIZER):
    """(random, human, normalizer table) for an Atari game, or None."""
    family, key = env_family(env_id)
    if family != "atari":
        return None
    table = normalizer_table(references, name)
    entry = table.get("scores", {}).get(key)
    if entry is None:
        return None
    return entry["random"], entry["human"], {k: v for k, v in table.items() if k != "scores"}
