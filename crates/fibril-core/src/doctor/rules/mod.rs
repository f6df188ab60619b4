//! The rules, grouped by what they read. Each pushes findings; none fails.

mod cilium;
mod fibril;
mod host;
mod ipam;
mod k8s;

use super::finding::Finding;
use super::Ctx;

pub(crate) fn run_all(ctx: &Ctx<'_>, out: &mut Vec<Finding>) {
    ipam::check(ctx, out);
    cilium::check(ctx, out);
    fibril::check(ctx, out);
    host::check(ctx, out);
    k8s::check(ctx, out);
}
