"""A verdict is read only as the type the schema gives it: a string ``"false"`` is not a pass.

One case per verdict field (``usable``, ``validation.*``, ``gate.*``): the published schema refuses
the wrong type, ``Bundle.load`` refuses the manifest in one line, and ``Bundle.usable`` (which the
runners consult) treats anything but the boolean True as unusable even when the schema is bypassed.
"""

from __future__ import annotations

import copy

import pytest

from edgekit.bundle import Bundle, schema_problem
from edgekit.errors import BundleError

VALIDATION = {"passed": True, "metric": "top1", "value": 99.0, "reference": 99.5, "drop": 0.5, "max_drop": 1.0,
              "images": 50, "at": "2026-11-22T10:00:00+00:00"}
GATE = {"images": 200, "labelled": False, "metric": "top1", "drop": 0.5, "max_drop": 1.0, "agreement": 99.5}

# (field path under models.int8, a wrong value): each must be refused by the schema
WRONG = [
    (("usable",), "false"),
    (("usable",), 0),
    (("usable",), None),
    (("validation", "passed"), "false"),
    (("validation", "passed"), 1),
    (("validation", "metric"), "accuracy"),
    (("validation", "value"), "99"),
    (("validation", "reference"), "99.5"),
    (("validation", "drop"), "0.5"),
    (("validation", "max_drop"), "1"),
    (("validation", "max_drop"), -1),
    (("validation", "images"), 1.5),
    (("validation", "at"), 5),
    (("gate", "images"), "200"),
    (("gate", "labelled"), "no"),
    (("gate", "metric"), "acc"),
    (("gate", "drop"), "3.5"),
    (("gate", "max_drop"), "1"),
    (("gate", "agreement"), "99"),
]


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    from edgekit.tiny import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path_factory.mktemp("types") / "bundle", variants=True)
    bundle.models["int8"].update(validation=dict(VALIDATION), gate=dict(GATE))
    bundle.save()
    return Bundle.load(bundle.path)


def _set(manifest: dict, path: tuple, value) -> dict:
    m = copy.deepcopy(manifest)
    entry = m["models"]["int8"]
    for part in path[:-1]:
        entry = entry[part]
    entry[path[-1]] = value
    return m


def test_the_correct_types_pass(variants):
    assert schema_problem(variants.manifest) is None
    assert variants.usable("int8") and variants.verdict("int8") is None


@pytest.mark.parametrize("path,value", WRONG, ids=[f"{'.'.join(p)}={v!r}" for p, v in WRONG])
def test_schema_refuses_a_wrongly_typed_verdict(variants, tmp_path, path, value):
    m = _set(variants.manifest, path, value)
    problem = schema_problem(m)
    assert problem is not None and problem.startswith("models.int8." + ".".join(path)), problem
    with pytest.raises(BundleError, match="corrupt manifest"):
        Bundle(tmp_path, m).validate()


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], {}])
def test_usable_accepts_only_the_boolean_true(variants, value):
    """Bypassing the schema (a manifest edited in memory), a non-boolean never makes a model usable."""
    m = _set(variants.manifest, ("usable",), value)
    bundle = Bundle(variants.path, m)
    assert bundle.usable("int8") is False
    assert "int8" in bundle.verdict("int8")


def test_usable_true_false_and_absent(variants):
    m = copy.deepcopy(variants.manifest)
    m["models"]["int8"]["usable"] = False
    assert Bundle(variants.path, m).usable("int8") is False
    m["models"]["int8"]["usable"] = True
    assert Bundle(variants.path, m).usable("int8") is True
    del m["models"]["int8"]["usable"]  # never judged: usable, as before any gate
    assert Bundle(variants.path, m).usable("int8") is True
