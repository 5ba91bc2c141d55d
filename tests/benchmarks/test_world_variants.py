"""World variants for world_variants.py: the imperfect-teacher rewrites change only what they claim to;
the RL split and the scaled world."""
from benchmarks import world_variants
from masksearch_jax.data.traces import Trace

ONE = {"id": "q1", "type": "1hop", "hops": [{"subject": "Braev Point", "answer": "238,905"}]}
TWO = {"id": "q2", "type": "2hop", "hops": [{"subject": "Ritath Works", "answer": "Stou"},
                                            {"subject": "Stou", "answer": "Peitru Harbor"}]}
R1 = ('<think>I search.</think>\n<search> Braev Point population </search>\n\n<information>Doc 1'
      '(Title: Braev Point) It has a population of 238,905.</information>\n\n<think>Doc 1 says: '
      '"It has a population of 238,905." So the population is 238,905, and the answer is 238,905.'
      '</think>\n<answer> 238,905 </answer>')


def test_echo_rewrites_the_conclusion_not_the_evidence():
  traces = [Trace("p1", R1, meta={"id": "q1"}), Trace("p2", "<answer> Peitru Harbor </answer>",
                                                      meta={"id": "q2"})]
  out, n = world_variants.echo_traces(traces, [ONE, TWO], share=1.0)
  assert n == 1 and out[0].meta["echo"] and "echo" not in out[1].meta
  assert out[0].response.endswith("<answer> Braev Point </answer>")
  assert 'population of 238,905."' in out[0].response           # the quoted evidence is intact
  assert "and the answer is Braev Point." in out[0].response
  assert out[1].response == traces[1].response                  # 2-hop traces untouched
  assert world_variants.echo_traces(traces, [ONE, TWO], share=0.0)[1] == 0


def test_rl_share_holds_back_disjoint_questions_per_hop_type():
  items = [{"id": f"a{i}", "type": "1hop"} for i in range(10)]
  items += [{"id": f"b{i}", "type": "2hop"} for i in range(20)]
  sft, rl = world_variants.split_for_rl(items, 0.5)
  assert {q["id"] for q in sft}.isdisjoint({q["id"] for q in rl})
  assert len(sft) + len(rl) == 30
  assert sum(q["type"] == "1hop" for q in rl) == 5 and sum(q["type"] == "2hop" for q in rl) == 10
  assert world_variants.split_for_rl(items, 0.5) == (sft, rl)               # seeded
  assert world_variants.split_for_rl(items, 0.0) == (items, [])
  import pytest
  with pytest.raises(ValueError, match="rl_share"):
    world_variants.split_for_rl(items, 1.0)


def test_world_config_scales_entities_and_questions():
  from masksearch_jax.data import world
  d, c = world.WorldConfig(), world_variants.world_config(4)
  assert (c.n_people, c.n_places, c.n_orgs, c.n_works, c.n_questions) == (
      4 * d.n_people, 4 * d.n_places, 4 * d.n_orgs, 4 * d.n_works, 4 * d.n_questions)
  assert world_variants.world_config(1) == d
  import pytest
  with pytest.raises(ValueError, match="world_scale"):
    world_variants.world_config(0)
