"""The negative text engine: rule foils on real phrases, and both LLM backends for real (a tiny
random causal LM from a folder, and a chat-completions server on 127.0.0.1)."""

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from rexomni.data_engines.negatives_text import (
    ChatCompletionsGenerator,
    LLMFoiler,
    RuleFoiler,
    TransformersGenerator,
    add_negative_phrases,
    filter_foils,
    load_lexicon,
    parse_lines,
)

COCO_NAMES = (
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,parking meter,"
    "bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,tie,suitcase,frisbee,"
    "skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,tennis racket,bottle,"
    "wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,pizza,donut,cake,"
    "chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,cell phone,microwave,oven,"
    "toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,hair drier,toothbrush"
).split(",")


@pytest.fixture(scope="module")
def foiler():
    return RuleFoiler()


def test_every_coco_name_has_similar_category_foils(foiler):
    assert len(COCO_NAMES) == 80
    for name in COCO_NAMES:
        similar = foiler.similar(name)
        assert similar and name not in similar, name


# A spread of LVIS v1 names as the LVIS annotation file spells them.
LVIS_NAMES = ("aerosol_can air_conditioner alarm_clock apron armchair baby_buggy bagel bat_(animal) beanie beer_bottle "
              "bell_pepper bow-tie bulldozer bus_(vehicle) cab_(taxi) cap_(headwear) car_(automobile) "
              "cellular_telephone "
              "chopping_board crab_(animal) cub_(animal) deck_chair domestic_ass doughnut drum_(musical_instrument) "
              "egg_yolk fig_(fruit) flip-flop_(sandal) glass_(drink_container) hair_dryer ice_skate "
              "iron_(for_clothing) "
              "kiwi_fruit laptop_computer legging_(clothing) mailbox_(at_home) monitor_(computer_equipment) "
              "mouse_(computer_equipment) orange_(fruit) pan_(for_cooking) pitcher_(vessel_for_liquid) polar_bear "
              "saddle_(on_an_animal) salmon_(fish) sandal_(type_of_shoe) speaker_(stereo_equipment) statue_(sculpture) "
              "television_set tractor_(farm_equipment) train_(railroad_vehicle) turkey_(food) wineglass yacht").split()


def test_lvis_names_have_similar_category_foils(foiler):
    for name in LVIS_NAMES:
        assert foiler.similar(name), name


def test_synonyms_are_never_foils(foiler):
    lexicon = load_lexicon()
    for names in lexicon["synonyms"]:
        for name in names:
            assert not set(foiler.similar(name)) & set(names), name


def test_single_edit_foils_on_real_phrases(foiler):
    foils = {f.kind: [] for f in foiler.foils("x")}
    for f in foiler.foils("a small red car parked on the left of two wooden benches"):
        foils.setdefault(f.kind, []).append(f.text)
    assert "a small blue car parked on the left of two wooden benches" in foils["color"]
    assert "a large red car parked on the left of two wooden benches" in foils["size"]
    assert "a small red car parked on the right of two wooden benches" in foils["spatial"]
    assert "a small red car parked on the left of two metal benches" in foils["material"]
    assert "a small red car parked on the left of three wooden benches" in foils["count"]
    assert "a small red truck parked on the left of two wooden benches" in foils["category"]
    assert "a small red car moving on the left of two wooden benches" in foils["state"]
    actions = [f.text for f in foiler.foils("a man riding a horse") if f.kind == "action"]
    assert "a man pushing a horse" in actions
    assert "a dog with a leash" in foiler("a dog without a leash")
    assert "three dogs" in foiler("two dogs") and "one dog" in foiler("two dogs")
    assert "two cats" in foiler("a cat")  # the head noun follows the count
    assert "an ottoman" in foiler("a couch")  # the article follows the new word


def test_foils_are_filtered_deduplicated_and_seeded(foiler):
    phrase = "the cup left of the plate right of the bowl"
    foils = foiler(phrase)
    assert phrase not in foils and len(foils) == len(set(foils))
    assert all(sorted(f.split()) != sorted(phrase.split()) for f in foils)
    assert foiler(phrase, n=3, rng=1) == foiler(phrase, n=3, rng=1)
    assert len(foiler(phrase, n=3, rng=1)) == 3
    assert foiler("xyzzy") == []


def test_filter_rules():
    kept = filter_foils("a red car", ["a red car", "car a red", "A red car.", "a blue car", "a blue car",
                                      "", "a " + "very " * 20 + "blue car", "a green car"])
    assert kept == ["a blue car", "a green car"]


def test_parse_lines_strips_list_marks():
    text = 'Here are some negatives:\n1. "a cat on a sofa"\n- a dog under the table\n* two dogs\n\n(4) a bird'
    assert parse_lines(text) == ["a cat on a sofa", "a dog under the table", "two dogs", "a bird"]


def test_add_negative_phrases_skips_present_phrases(foiler):
    sample = {"objects": [{"phrase": "dog", "bbox": [0, 0, 1, 1]}, {"phrase": "cat", "bbox": [0, 0, 1, 1]}]}
    add_negative_phrases(sample, foiler, random.Random(0), k=3)
    negatives = sample["negatives"]["phrases"]
    assert 1 <= len(negatives) <= 3 and not {"dog", "cat"} & set(negatives)


# --------------------------------------------------------------------------- LM backend


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 1-layer GPT-2 with a byte-level BPE trained here: real loading and generation code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_lm")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["a red car on the left", "two dogs playing with a ball", "a man riding a horse"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        eos_token_id=0, bos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def test_transformers_backend_generates_and_caches(tiny_lm, tmp_path):
    generator = TransformersGenerator(tiny_lm)
    texts = generator.generate(["a red car", "a man riding a horse"], max_new_tokens=12, seed=0)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert texts == generator.generate(["a red car", "a man riding a horse"], max_new_tokens=12, seed=0)

    llm = LLMFoiler(generator, cache_dir=str(tmp_path / "cache"), max_new_tokens=12)
    phrases = ["a red car on the left", "two dogs"]
    first = llm.foils(phrases, n=3, method="recombination")
    assert llm.calls == 4  # objects, then re-combination, for each phrase
    for phrase, foils in zip(phrases, first):
        assert foils == filter_foils(phrase, foils) and len(foils) <= 3
    again = LLMFoiler(generator, cache_dir=str(tmp_path / "cache"), max_new_tokens=12)
    assert again.foils(phrases, n=3) == first and again.calls == 0  # all from the disk cache
    assert len(llm.foils(phrases, method="summary")) == 2


def test_missing_model_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TransformersGenerator(str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- endpoint backend


class _ChatServer(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 (the http.server interface)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ChatServer.requests.append((self.path, dict(self.headers), body))
        prompt = body["messages"][-1]["content"]
        if "List the objects" in prompt:
            content = "dog, leash"
        elif "Summarise" in prompt:
            content = "1. Change a colour.\n2. Remove an object."
        else:
            content = ("Here are three:\n1. a dog without a leash\n2. a leash without a dog\n"
                       "3. a dog without a leash\n- a cat on a leash\n* a dog with a leash")
        reply = json.dumps({"id": "x", "object": "chat.completion",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = HTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatServer.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_chat_completions_backend(chat_server, tmp_path):
    generator = ChatCompletionsGenerator(chat_server, model="tiny-chat", api_key="k123")
    llm = LLMFoiler(generator, cache_dir=str(tmp_path / "cache"))
    (foils,) = llm.foils(["a dog with a leash"], n=3)
    # the positive itself and the duplicate are filtered out; the order is kept
    assert foils == ["a dog without a leash", "a leash without a dog", "a cat on a leash"]
    path, headers, body = _ChatServer.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "tiny-chat"
    assert headers["Authorization"] == "Bearer k123"
    assert "dog, leash" in body["messages"][0]["content"]  # step 2 sees the objects of step 1
    (summary_foils,) = llm.foils(["a dog with a leash"], n=5, method="summary")
    assert "Change a colour" in _ChatServer.requests[-1][2]["messages"][0]["content"]
    assert "a dog with a leash" not in summary_foils
    n_requests = len(_ChatServer.requests)
    LLMFoiler(generator, cache_dir=str(tmp_path / "cache")).foils(["a dog with a leash"], n=3)
    assert len(_ChatServer.requests) == n_requests  # cached


def test_chat_backend_reports_a_dead_endpoint():
    generator = ChatCompletionsGenerator("http://127.0.0.1:9/v1", model="m", timeout=2, retries=0)
    with pytest.raises(RuntimeError, match="127.0.0.1:9"):
        generator.generate(["hello"])
