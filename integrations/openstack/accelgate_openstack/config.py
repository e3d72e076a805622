"""The ``[accelgate]`` options both adapters read from their service's configuration file."""

from oslo_config import cfg

GROUP = "accelgate"

OPTS = [
    cfg.ListOpt(
        "accelctl_command",
        default=["accelctl"],
        help="The command that runs accelctl, as a comma-separated argv prefix. The default "
        "finds accelctl on PATH. An agent that runs as root but should hold only its "
        "service role can drop to that identity, e.g. "
        "'setpriv,--reuid=ironic,--regid=ironic,--init-groups,--,/usr/bin/accelctl'.",
    ),
    cfg.StrOpt(
        "bus",
        help="D-Bus address of accelgated (e.g. unix:path=/run/accelgate/bus). Unset: "
        "accelctl's default, ACCELGATE_BUS or the system bus.",
    ),
    cfg.StrOpt(
        "sysfs_root",
        default="/sys",
        help="Where sysfs is mounted; VF PCI addresses are read from its virtfnN links.",
    ),
    cfg.IntOpt(
        "command_timeout",
        default=600,
        min=1,
        help="Seconds one accelctl request may take (a flash or program job included).",
    ),
]


def register(conf):
    conf.register_opts(OPTS, group=GROUP)
    return conf


def list_opts():
    return [(GROUP, OPTS)]
