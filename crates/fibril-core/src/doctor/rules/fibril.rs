//! Rules over what fibril's own agents report (seed 001: legacy host routing, named).

use crate::doctor::finding::{Finding, RuleId};
use crate::doctor::parse::fibril::HostRouting;
use crate::doctor::Ctx;

pub(crate) fn check(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    for a in &ctx.agents {
        let HostRouting::Legacy { cause } = &a.host_routing else {
            continue;
        };
        let mut f = Finding::new(
            RuleId::LegacyHostRouting,
            format!(
                "the fibril agent on node {} forwards with legacy (kernel) host routing: {cause}",
                a.node
            ),
        )
        .evidence(a.evidence("hostRouting.cause", cause.clone()));
        if let Some(d) = &a.degraded {
            f = f.evidence(a.evidence("degraded", d.clone()));
        }
        out.push(
            f.why("with legacy host routing every pod packet goes through the kernel's routing stack instead of a BPF redirect, at several times the CPU per packet; the agent does this only when allowDegraded lets it, and says why")
                .fix(format!(
                    "remove the cause the agent names on {} and restart it, or set allowDegraded: false so the agent refuses to start instead of running degraded",
                    a.node
                )),
        );
    }
}
