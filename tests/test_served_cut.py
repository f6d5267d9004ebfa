"""A served answer that did not end on its own (cut at the gateway's token limit, or stopped in a loop) does not train
as a confirmed original: the store exports it in ``meta.cut``, revise carries it as ``original_cut``, and the
structural step drops it. A real SQLite store; no model."""
from selfevolve.records import read_jsonl
from selfevolve.store import ChatStore

from test_injection import confirmed_turn, curate

LONG = "Step 1: preheat the oven to 180 C. Step 2: whisk four eggs with 100 g of sugar until pale, then fold in"


def exchange(store, user, msgs, answer, finish):
    cid = store.resolve_id(user, msgs, None)
    store.record_exchange(cid, user, msgs, answer, "base", True, finish_reason=finish)
    return cid


def test_the_store_exports_which_served_answers_were_cut(tmp_path):
    s = ChatStore(tmp_path / "chats.sqlite")
    u = s.hash_user("u", None)
    ask = [{"role": "user", "content": "How do I make a sponge cake?"}]
    cid = exchange(s, u, ask, LONG, "length")
    grown = ask + [{"role": "assistant", "content": LONG}, {"role": "user", "content": "and the icing?"}]
    assert exchange(s, u, grown, "Beat 200 g of icing sugar with 2 tbsp of water.", "stop") == cid
    loop = exchange(s, u, [{"role": "user", "content": "Say hi."}], "hi hi hi hi hi hi", "repetition")
    # a client that rewrites the cut answer into its history: that text is not the model's, nor "cut"
    edited = ask + [{"role": "assistant", "content": LONG + " the flour."}, {"role": "user", "content": "ok"}]
    other = exchange(s, u, edited, "Bake for 25 minutes.", "stop")
    out = {r["id"]: r["meta"] for r in s.export_conversations()}
    assert out[cid]["served"] == [1, 3] and out[cid]["cut"] == [1]
    assert out[loop]["cut"] == [1]
    assert out[other]["served"] == [3] and out[other]["cut"] == []
    s.close()


def test_a_cut_answer_the_user_thanked_does_not_train(tmp_path):
    conv = {"id": "g1", "source": "gateway", "meta": {"seq": 1, "user": "u1", "served": [1, 3], "cut": [1]},
            "messages": [{"role": "user", "content": "How do I make a sponge cake?"},
                         {"role": "assistant", "content": LONG}, {"role": "user", "content": "thanks, and icing?"},
                         {"role": "assistant", "content": "Beat 200 g of icing sugar with 2 tbsp of water."},
                         {"role": "user", "content": "thanks"}]}
    (r1, s1), (r3, s3) = confirmed_turn(conv, 1), confirmed_turn(conv, 3)
    assert r1["original_cut"] and not r3["original_cut"]
    s, rnd = curate(tmp_path, [conv], [r1, r3], [s1, s3], max_user_share=1.0)
    assert s.read == 2 == s.kept + s.dropped and s.kept == 1
    (rej,) = read_jsonl(rnd.rejected)
    assert rej["id"] == "g1#1" and rej["filter"] == "structural" and "did not end on its own" in rej["reason"]
    # a record revise wrote before the field existed is read as not cut
    old = {k: v for k, v in r1.items() if k != "original_cut"}
    s, _ = curate(tmp_path / "old", [conv], [old], [s1], max_user_share=1.0)
    assert s.kept == 1
