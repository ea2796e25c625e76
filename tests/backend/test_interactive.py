"""Reading Label Studio's interactive context: smart regions, typed prompts, and which label a
typed prompt names."""

from __future__ import annotations

from backend_helpers import load_recorded
from hypothesis import given
from hypothesis import strategies as st

from backend.interactive import (
    Interaction,
    is_interactive,
    labels_named,
    normalize,
    parse_context,
)

LABELS = {"cat": ("cat",), "black cat": ("black cat",), "dog": ("a photo of a dog", "puppy")}


def _textarea(text, to_name="image"):
    return {"type": "textarea", "from_name": "prompt", "to_name": to_name, "value": {"text": text}}


def _keypoint(labels, to_name="image", **value):
    return {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": to_name,
        "value": {"x": 50, "y": 50, "keypointlabels": labels, **value},
    }


def test_the_recorded_context_is_a_typed_prompt():
    body = load_recorded("predict_interactive_context.json")["body"]
    got = parse_context(body["params"]["context"], {"image"})
    assert got == Interaction(regions=(), prompts=("a cat",), items=1)


def test_regions_and_prompts_on_other_images_or_malformed_are_left_out():
    context = {
        "result": [
            _keypoint(["dog"]),
            _keypoint(["cat"], to_name="other"),
            _keypoint(["cat"], is_positive=False),  # a negative click is not an exemplar
            _keypoint([]),
            _keypoint("red circle"),  # labels must be a list, not a string
            _keypoint(["ok", 5]),
            {"type": "rectanglelabels", "to_name": "image", "value": "not a dict"},
            {"type": 5, "to_name": "image", "value": {}},
            {"type": "textarea", "to_name": ["image"], "value": {"text": ["listed name"]}},
            {"type": "choices", "to_name": "image", "value": {"choices": ["x"]}},
            "not an item",
            _textarea(["  the dog  ", "", "two\nlines", "the dog"]),
            _textarea("a lone string"),
            _textarea(["elsewhere"], to_name="other"),
            _textarea(None),
        ]
    }
    got = parse_context(context, {"image"})
    assert [(r.kind, r.labels) for r in got.regions] == [
        ("keypointlabels", ("dog",)),
        ("keypointlabels", ("ok",)),
    ]
    assert got.regions[0].item["value"]["x"] == 50
    assert got.prompts == ("the dog", "two", "lines", "a lone string")
    # every smart-region or TextArea item on the image counts, usable or not
    assert got.items == 9


def test_an_unusable_click_still_asks_for_an_interactive_answer():
    got = parse_context({"result": [_keypoint(["cat"], is_positive=False)]}, {"image"})
    assert got.regions == () and got.prompts == () and got


def test_items_on_another_image_do_not_make_an_interaction():
    got = parse_context({"result": [_keypoint(["cat"]), _textarea("x")]}, {"other"})
    assert not got


def test_no_context_asks_for_an_ordinary_prediction():
    for context in (None, {}, {"result": None}, {"result": "x"}, [], "text"):
        got = parse_context(context, {"image"})
        assert got == Interaction() and not got


def test_a_prompt_equal_to_a_label_or_one_of_its_prompts_names_it():
    assert labels_named("Cat", LABELS) == ["cat"]
    assert labels_named("  BLACK   cat ", LABELS) == ["black cat"]
    assert labels_named("Puppy", LABELS) == ["dog"]


def test_a_label_found_only_inside_a_longer_name_is_not_named():
    assert labels_named("the black cat on the sofa", LABELS) == ["black cat"]
    assert labels_named("a cat, sleeping", LABELS) == ["cat"]
    assert labels_named("a puppy!", LABELS) == ["dog"]
    # "cat" also stands alone: both are named, and the caller decides
    assert labels_named("a black cat and a cat", LABELS) == ["cat", "black cat"]


def test_separate_names_are_not_ranked_by_length():
    labels = {"dog": ("dog",), "person": ("person",), "sofa": ("sofa",)}
    assert labels_named("the dog next to the person", labels) == ["dog", "person"]
    assert labels_named("a dog on a sofa", labels) == ["dog", "sofa"]


def test_only_whole_words_name_a_label():
    assert labels_named("concatenate", LABELS) == []
    assert labels_named("cats", LABELS) == []
    assert labels_named("a bird", LABELS) == []


def test_only_prompt_fields_give_prompts_but_any_textarea_is_an_interaction():
    context = {
        "result": [
            _textarea("the dog"),  # from_name "prompt"
            {**_textarea("image is blurry"), "from_name": "comment"},
            {**_textarea("a cat"), "from_name": "ask"},
        ]
    }
    got = parse_context(context, {"image"})
    assert got.prompts == ("the dog",) and got.items == 3
    assert parse_context(context, {"image"}, {"ask"}).prompts == ("a cat",)
    only_comment = parse_context({"result": [context["result"][1]]}, {"image"})
    assert only_comment and only_comment.prompts == ()  # interactive, but prompts nothing


def test_prompt_fields_of_a_label_config():
    from backend.label_config import prompt_fields

    config = (
        '<View><Image name="image" value="$image"/>'
        '<TextArea name="comment" toName="image"/>'
        '<TextArea name="ask" toName="image" model_prompt="true"/>'
        '<TextArea name="words" toName="image" perRegion="true" model_prompt="true"/>'
        "</View>"
    )
    assert prompt_fields(config) == {"prompt", "ask"}
    per_region = '<View><Image name="image" value="$image"/>'
    per_region += '<TextArea name="prompt" toName="image" perRegion="true"/></View>'
    assert prompt_fields(per_region) == set()
    assert prompt_fields("<View><Image") == {"prompt"}


def test_a_request_is_interactive_when_its_context_is_on_an_image_of_the_config():
    from backend.label_config import image_names

    config = (
        '<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
        '<BrushLabels name="tag" toName="a"><Label value="cat"/></BrushLabels>'
        '<TextArea name="prompt" toName="b"/></View>'
    )
    images = image_names(config)
    assert images == {"a", "b"}  # "b" has no control the backend answers: still an image
    assert image_names("<View><Image") == frozenset()
    expected = [
        ({"result": [_textarea("x", to_name="b")]}, True),  # an image without a control
        ({"result": [_keypoint(["cat"], to_name="a", is_positive=False)]}, True),  # unusable
        ({"result": [_textarea("x", to_name="elsewhere")]}, False),  # no image of the config
        ({"result": [{"type": "choices", "to_name": "a", "value": {"choices": ["x"]}}]}, False),
        ({"result": []}, False),
        (None, False),
    ]
    for context, interactive in expected:
        assert is_interactive(context, images) is interactive, context


def test_labels_tied_on_length_are_all_returned_in_order():
    assert labels_named("cat or dog", {"dog": ("dog",), "cat": ("cat",)}) == ["dog", "cat"]


def test_unicode_labels_are_named_case_insensitively():
    assert labels_named("большой КОТ", {"кот": ("кот",), "Straße": ("Straße",)}) == ["кот"]
    assert labels_named("die STRASSE", {"Straße": ("Straße",)}) == ["Straße"]


@given(st.text(min_size=1).filter(lambda s: normalize(s)))
def test_a_label_typed_as_it_is_named_is_always_found(name):
    labels = {name: (name,), "zz unrelated": ("zz unrelated",)}
    assert labels_named(name, labels) == [name]
    assert name in labels_named(f"find {name} here", labels)
