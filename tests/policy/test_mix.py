"""Mixing proposers by weight, pure: shares over many calls match the weights; parts see each other."""

from proposer.base import History, Proposal, fingerprint
from proposer.mix import MixProposer


class Fixed:
    def __init__(self, name):
        self.name = name
        self.seen = []

    def propose(self, n, history):
        self.seen.append(set(history.tried))
        return [Proposal(f"{self.name} {len(self.seen)}.{i}", f"X = '{self.name}{len(self.seen)}{i}'\n", self.name)
                for i in range(n)]


def test_long_run_shares_match_the_weights_even_one_slot_at_a_time():
    llm, mutate = Fixed("llm"), Fixed("mutate")
    mix = MixProposer([(llm, 0.7), (mutate, 0.3)])
    origins = [p.origin for _ in range(100) for p in mix.propose(1, History("b", "X = 0\n"))]
    assert origins.count("llm") == 70 and origins.count("mutate") == 30


def test_later_parts_see_what_earlier_parts_proposed_in_the_same_call():
    a, b = Fixed("a"), Fixed("b")
    out = MixProposer([(a, 1), (b, 1)]).propose(4, History("b", "X = 0\n"))
    assert len(out) == 4
    assert {fingerprint(p.source) for p in out if p.origin == "a"} <= b.seen[-1]


def test_a_mix_is_built_from_the_config(tmp_path):
    from proposer import make_proposer

    p = make_proposer("mutate", {"mix": {"mutate": 1.0}, "profile": "cpu"})
    assert isinstance(p, MixProposer) and p.parts[0][0].name == "mutate"
