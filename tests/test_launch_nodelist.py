"""distributed.expand_nodelist: Slurm's compressed host list where `scontrol show hostnames` cannot
run (the master's name comes from its first host). Checked against scontrol itself where it is
installed: it expands a list offline, given any slurm.conf."""

import shutil
import subprocess

import pytest

from ngpt_ds import distributed
from ngpt_ds.errors import NgptConfigError

from conftest import require_system

# What `scontrol show hostnames` (Slurm 23.11) prints for each list.
EXPANSIONS = {
    "rack[0-1]_blade[0-1]": ["rack0_blade0", "rack0_blade1", "rack1_blade0", "rack1_blade1"],
    "gpu[01-03,7],login1": ["gpu01", "gpu02", "gpu03", "gpu7", "login1"],
    "n[001-003]": ["n001", "n002", "n003"],
    "x[9-11]": ["x9", "x10", "x11"],
    "a[01-02]b[1]": ["a01b1", "a02b1"],
    "a[1-2],b,c[3]d[4-5]": ["a1", "a2", "b", "c3d4", "c3d5"],
    "r[1,3]n[08-10]": ["r1n08", "r1n09", "r1n10", "r3n08", "r3n09", "r3n10"],
    "node1,node2": ["node1", "node2"],
}


@pytest.mark.parametrize("nodelist", EXPANSIONS)
def test_nodelist_with_several_bracket_groups_expands_as_scontrol_does(nodelist):
    """Fault: each bracket group was read as a host of its own: 'rack[0-1]_blade[0-1]' gave rack0, rack1,
    _blade0, _blade1, so the master was 'rack0', a host that does not exist."""
    assert distributed.expand_nodelist(nodelist) == EXPANSIONS[nodelist]


def test_the_expansions_are_scontrols(tmp_path):
    require_system(
        shutil.which("scontrol") is not None, "scontrol not installed (the expansions above were taken from it)"
    )
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=n1 CPUs=1 State=UNKNOWN\n")
    for nodelist, hosts in EXPANSIONS.items():
        proc = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin:/usr/local/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.stdout.split() == hosts, (nodelist, proc.stdout, proc.stderr)


@pytest.mark.parametrize("nodelist", ["gpu[a-c]", "gpu[3-1]", "gpu[1-2", "gpu]1["])
def test_an_unreadable_nodelist_asks_for_master_addr(nodelist):
    with pytest.raises(NgptConfigError, match=r"cannot read the Slurm node list .*set MASTER_ADDR"):
        distributed.expand_nodelist(nodelist)
