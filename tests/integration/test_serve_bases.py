"""One replica of the shared Serve app holds LoRA tenants on two bases at once: a tiny MPNet, mean-pooled
as all-mpnet-base-v2 is (``--base mpnet``), beside the app's tiny BERT (MiniLM's family). Over HTTP,
each tenant answers as its own PEFT model would alone, whatever base its neighbours use.
"""
from __future__ import annotations

import pytest

from registry import ExportedClassifier
from tests.conftest import make_tiny_mpnet
from tests.serve_helpers import TEMPERATURE, random_lora_export, register
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
TEXTS = ["gold is up 150% in after-hours trading", "bullion drops to a two-month low",
         "a much longer headline about rates, jobs and the dollar " * 3]


def test_lora_tenants_on_mpnet_and_bert_share_a_replica_and_each_answers_as_its_own_model(served, tiny_base,
                                                                                      tmp_path_factory):
    root = tmp_path_factory.mktemp("two-bases")
    mpnet = make_tiny_mpnet(root / "mpnet")
    bases = {"mia": mpnet, "max": mpnet, "bea": tiny_base}  # two tenants share the MPNet bank
    exports = {tenant: random_lora_export(base, root / tenant, seed=11 + i, rank=4 + 4 * i)
               for i, (tenant, base) in enumerate(bases.items())}
    for tenant, export in exports.items():
        register(served["reg"], tenant, export)
    admin = {"Authorization": f"Bearer {served['keys']['admin']}"}

    def answer(tenant):
        return served["client"].post(f"/v1/tenants/{tenant}/predict", headers=admin, json={"texts": TEXTS})

    wait_for(lambda: all(answer(t).status_code == 200 for t in exports), 60,
             "the endpoint to serve the new MPNet and BERT LoRA tenants")
    for tenant, export in exports.items():
        alone = ExportedClassifier(export, base_dir=bases[tenant])
        expected = [alone.predict([text], TEMPERATURE)[0] for text in TEXTS]  # the registered version's T
        got = answer(tenant).json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in expected], tenant
        for mine, theirs in zip(got, expected):
            assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-5), tenant
    first_scores = {str(answer(t).json()["predictions"][0]["scores"]) for t in exports}
    assert len(first_scores) == 3  # every tenant's weights matter: none could answer for another
