//! Per-kind behaviour: defaulting, create-time preparation and update rules.
//!
//! This is what kube-apiserver's per-resource "strategies" and defaulting functions do. The
//! defaults are the ones controllers and kubelets rely on (a pod is `Pending` with
//! `restartPolicy: Always`, a port is `TCP`, a deployment has one replica), and the update
//! rules are the ones clients run into (a pod's spec is mostly immutable, a Service keeps its
//! ClusterIP). Objects are handled as JSON in their canonical k8s-openapi form.

use ipnet::Ipv4Net;
use serde_json::{json, Map, Value};

use crate::alloc::{self, InUse};
use crate::registry::{self, ResourceInfo};
use crate::status::{ApiError, Cause};
use crate::store::{ObjKey, Txn};

/// Label every namespace carries with its own name (NetworkPolicy namespace selectors rely on
/// it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn map_at<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    map_in(v.as_object_mut().expect("made an object"), key)
}

fn map_in<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("made an object")
}

fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    match m.get(key) {
        None | Some(Value::Null) => {
            m.insert(key.to_string(), value);
        }
        Some(_) => {}
    }
}

fn each_in<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> + 'a {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Applies the kind's defaults. Idempotent; run on every create and update, as the API server
/// defaults every object it decodes.
pub fn apply_defaults(res: &ResourceInfo, obj: &mut Value) {
    match res.kind {
        "Pod" => default_pod_spec(map_at(obj, "spec")),
        "Service" => default_service(obj),
        "Deployment" => default_deployment(obj),
        "NetworkPolicy" => default_network_policy(obj),
        "EndpointSlice" => {
            if let Some(m) = obj.as_object_mut() {
                for p in each_in(m, "ports") {
                    default(p, "protocol", json!("TCP"));
                }
            }
        }
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            map_in(map_at(obj, "metadata"), "labels").insert(NAMESPACE_NAME_LABEL.into(), name);
        }
        _ => {}
    }
}

fn default_pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "securityContext", json!({}));
    default(spec, "enableServiceLinks", json!(true));
    for key in ["initContainers", "containers"] {
        for c in each_in(spec, key) {
            let policy = pull_policy(c.get("image").and_then(Value::as_str).unwrap_or(""));
            default(c, "imagePullPolicy", json!(policy));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            for p in each_in(c, "ports") {
                default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// `Always` for `:latest` or untagged images, `IfNotPresent` otherwise (as kube-apiserver).
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_service(obj: &mut Value) {
    let spec = map_at(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if ty != "ExternalName" {
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    for p in each_in(spec, "ports") {
        default(p, "protocol", json!("TCP"));
        if let Some(port) = p.get("port").cloned() {
            default(p, "targetPort", port);
        }
    }
}

fn default_deployment(obj: &mut Value) {
    let spec = map_at(obj, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
    if let Some(s) = strategy.as_object_mut() {
        default(s, "type", json!("RollingUpdate"));
        if s["type"] == "RollingUpdate" {
            let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
            if let Some(ru) = ru.as_object_mut() {
                default(ru, "maxUnavailable", json!("25%"));
                default(ru, "maxSurge", json!("25%"));
            }
        }
    }
    let template = spec.entry("template").or_insert_with(|| json!({}));
    default_pod_spec(map_at(template, "spec"));
}

fn default_network_policy(obj: &mut Value) {
    let spec = map_at(obj, "spec");
    let has_types = spec
        .get("policyTypes")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_types {
        let egress = spec
            .get("egress")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let types = if egress {
            json!(["Ingress", "Egress"])
        } else {
            json!(["Ingress"])
        };
        spec.insert("policyTypes".into(), types);
    }
    for dir in ["ingress", "egress"] {
        for rule in each_in(spec, dir) {
            for p in each_in(rule, "ports") {
                default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// Create-time preparation after defaulting: status as the server owns it, and allocations.
pub fn prepare_create(
    res: &'static ResourceInfo,
    obj: &mut Value,
    txn: &Txn<'_>,
    service_cidr: &Ipv4Net,
) -> Result<(), ApiError> {
    let m = obj.as_object_mut().expect("objects are JSON objects");
    match res.kind {
        "Pod" => {
            let qos = qos_class(m.get("spec").unwrap_or(&Value::Null));
            m.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        "Deployment" => {
            m.remove("status");
        }
        "Namespace" => {
            map_at(obj, "spec").insert("finalizers".into(), json!(["kubernetes"]));
            obj["status"] = json!({"phase": "Active"});
        }
        "Service" => {
            obj["status"] = json!({"loadBalancer": {}});
            let used = InUse::collect(txn, &registry::services().group_resource(), None);
            allocate_service(res, obj, None, used, service_cidr)?;
        }
        _ => {}
    }
    Ok(())
}

/// kube-apiserver's `dropTypeDependentFields`, run on an update's object before it is
/// validated: when a Service's type change makes a field meaningless and the update left that
/// field as it was stored, the field goes (and with it its allocation), instead of the update
/// being refused for carrying it. A value the update itself changed is kept, so that a
/// contradiction the user wrote is still refused by validation, naming the field. So
/// `{"spec": {"type": "ClusterIP"}}` merged into a NodePort Service drops its nodePorts.
pub fn drop_type_dependent_fields(res: &'static ResourceInfo, new: &mut Value, old: &Value) {
    if res.kind != "Service" {
        return;
    }
    let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let old_spec = &old["spec"];
    let type_of = |s: &Value| s["type"].as_str().unwrap_or("ClusterIP").to_string();
    let (old_ty, new_ty) = (type_of(old_spec), type_of(&Value::Object(spec.clone())));
    let field = |s: &Map<String, Value>, k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    let old_field = |k: &str| old_spec.get(k).cloned().unwrap_or(Value::Null);

    // needsClusterIP: every type but ExternalName.
    if old_ty != "ExternalName" && new_ty == "ExternalName" {
        if field(spec, "clusterIP") == old_field("clusterIP")
            && field(spec, "clusterIPs") == old_field("clusterIPs")
        {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        for k in ["ipFamilies", "ipFamilyPolicy"] {
            if field(spec, k) == old_field(k) {
                spec.remove(k);
            }
        }
    }

    // needsNodePort; sameNodePorts: the update adds no nodePort the Service did not hold.
    let needs_node_port = |ty: &str| matches!(ty, "NodePort" | "LoadBalancer");
    let node_ports = |ports: Option<&Value>| -> std::collections::BTreeSet<u64> {
        ports
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_u64().filter(|n| *n != 0))
            .collect()
    };
    if needs_node_port(&old_ty)
        && !needs_node_port(&new_ty)
        && node_ports(spec.get("ports")).is_subset(&node_ports(old_spec.get("ports")))
    {
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
    }

    // needsHCNodePort: a LoadBalancer with externalTrafficPolicy Local.
    let needs_hc =
        |ty: &str, s: &Value| ty == "LoadBalancer" && s["externalTrafficPolicy"] == "Local";
    if needs_hc(&old_ty, old_spec)
        && !needs_hc(&new_ty, &Value::Object(spec.clone()))
        && field(spec, "healthCheckNodePort") == old_field("healthCheckNodePort")
    {
        spec.remove("healthCheckNodePort");
    }

    if old_ty == "LoadBalancer" && new_ty != "LoadBalancer" {
        for k in ["allocateLoadBalancerNodePorts", "loadBalancerClass"] {
            if field(spec, k) == old_field(k) {
                spec.remove(k);
            }
        }
    }

    // ExternallyAccessible: NodePort, LoadBalancer, or a ClusterIP with externalIPs.
    let externally_accessible = |ty: &str, s: &Value| {
        needs_node_port(ty)
            || (ty == "ClusterIP" && s["externalIPs"].as_array().is_some_and(|a| !a.is_empty()))
    };
    if externally_accessible(&old_ty, old_spec)
        && !externally_accessible(&new_ty, &Value::Object(spec.clone()))
        && field(spec, "externalTrafficPolicy") == old_field("externalTrafficPolicy")
    {
        spec.remove("externalTrafficPolicy");
    }
}

/// Update rules after defaulting `new`. `old` is the stored object.
pub fn prepare_update(
    res: &'static ResourceInfo,
    key: &ObjKey,
    new: &mut Value,
    old: &Value,
    txn: &Txn<'_>,
    service_cidr: &Ipv4Net,
) -> Result<(), ApiError> {
    match res.kind {
        "Pod" => check_pod_update(res, new, old),
        "Namespace" => {
            // spec.finalizers is only changed through namespaces/finalize.
            let m = new.as_object_mut().expect("objects are JSON objects");
            match old.get("spec") {
                Some(spec) => m.insert("spec".into(), spec.clone()),
                None => m.remove("spec"),
            };
            Ok(())
        }
        "Service" => {
            let used = InUse::collect(txn, &res.group_resource(), Some(key));
            allocate_service(res, new, Some(old), used, service_cidr)
        }
        _ => Ok(()),
    }
}

/// BestEffort without any requests or limits; Guaranteed when every container limits cpu and
/// memory with requests equal to limits; Burstable otherwise.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    let res_of =
        |c: &Value, which: &str, r: &str| c["resources"][which][r].as_str().map(str::to_string);
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|w| {
            c["resources"][*w]
                .as_object()
                .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = res_of(c, "limits", r);
            let request = res_of(c, "requests", r).or_else(|| limit.clone());
            limit.is_some() && request == limit
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than \
    `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, \
    `spec.tolerations` (only additions to existing tolerations), \
    `spec.terminationGracePeriodSeconds`, `spec.schedulingGates` (only removals) \
    or an unset `spec.nodeName`";

/// A pod's spec is immutable except for the fields kube-apiserver allows, plus one lab
/// allowance: an unset `spec.nodeName` may be set (the lab scheduler binds with a patch as
/// well as through `pods/binding`).
fn check_pod_update(res: &'static ResourceInfo, new: &Value, old: &Value) -> Result<(), ApiError> {
    let mut candidate = new["spec"].clone();
    let old_spec = &old["spec"];
    for key in ["containers", "initContainers"] {
        if let (Some(n), Some(o)) = (
            candidate.get_mut(key).and_then(Value::as_array_mut),
            old_spec.get(key).and_then(Value::as_array),
        ) {
            if n.len() == o.len() {
                for (nc, oc) in n.iter_mut().zip(o) {
                    nc["image"] = oc["image"].clone();
                }
            }
        }
    }
    let Some(c) = candidate.as_object_mut() else {
        return Ok(());
    };
    for key in [
        "activeDeadlineSeconds",
        "tolerations",
        "terminationGracePeriodSeconds",
        "schedulingGates",
    ] {
        match old_spec.get(key) {
            Some(v) => c.insert(key.into(), v.clone()),
            None => c.remove(key),
        };
    }
    let old_node = old_spec["nodeName"].as_str().unwrap_or("");
    if old_node.is_empty() {
        match old_spec.get("nodeName") {
            Some(v) => c.insert("nodeName".into(), v.clone()),
            None => c.remove("nodeName"),
        };
    }
    if &candidate == old_spec {
        Ok(())
    } else {
        tracing::debug!(diff = %json_patch::diff(old_spec, &candidate), "forbidden pod update");
        let name = old["metadata"]["name"].as_str().unwrap_or("");
        Err(ApiError::invalid(
            res,
            name,
            Cause::forbidden("spec", POD_UPDATE_FORBIDDEN),
        ))
    }
}

/// ClusterIP and NodePort handling for create (`old` = None) and update.
fn allocate_service(
    res: &'static ResourceInfo,
    svc: &mut Value,
    old: Option<&Value>,
    mut used: InUse,
    cidr: &Ipv4Net,
) -> Result<(), ApiError> {
    let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let invalid =
        |field: &str, msg: String| ApiError::invalid(res, &name, Cause::invalid(field, msg));
    let spec = map_at(svc, "spec");
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let old_spec = old.map(|o| &o["spec"]);
    let old_ip = old_spec
        .and_then(|s| s["clusterIP"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string);

    let mut requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ips_first = spec
        .get("clusterIPs")
        .and_then(|ips| ips.get(0))
        .unwrap_or(&Value::Null)
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    match (&requested, &ips_first) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                "spec.clusterIPs",
                format!(
                    "Invalid value: {b:?}: must match `clusterIP` when `clusterIP` is set ({a:?})"
                ),
            ))
        }
        (None, Some(b)) => requested = Some(b.clone()),
        _ => {}
    }

    if ty == "ExternalName" {
        // ExternalName services have no ClusterIP; changing to this type releases it.
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        spec.remove("ipFamilies");
        spec.remove("ipFamilyPolicy");
    } else {
        let old_was_external = old_spec.is_some_and(|s| s["type"] == "ExternalName");
        let ip = match (requested, &old_ip) {
            // As kube-apiserver's patchAllocatedValues: an update that omits the ClusterIP
            // keeps the allocated one.
            (None, Some(o)) if !old_was_external => o.clone(),
            (Some(r), Some(o)) if !old_was_external => {
                if &r != o {
                    return Err(invalid(
                        "spec.clusterIP",
                        format!("Invalid value: {r:?}: field is immutable"),
                    ));
                }
                r
            }
            (Some(r), _) if r == "None" => r,
            (Some(r), _) => {
                let ip = r.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIP",
                        format!("Invalid value: {r:?}: must be a valid IP address or \"None\""),
                    )
                })?;
                alloc::check_ip(cidr, ip, &used)
                    .map_err(|e| invalid("spec.clusterIP", format!("Invalid value: {r:?}: {e}")))?;
                r
            }
            (None, _) => alloc::allocate_ip(cidr, &used)
                .map_err(|e| invalid("spec.clusterIP", e.to_string()))?
                .to_string(),
        };
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.insert("ipFamilies".into(), json!(["IPv4"]));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }

    let wants_node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    let old_ports: Vec<Value> = old_spec
        .and_then(|s| s["ports"].as_array().cloned())
        .unwrap_or_default();
    let mut ports: Vec<Value> = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut claimed = std::collections::BTreeSet::new();
    for (i, p) in ports.iter_mut().enumerate() {
        let requested = p["nodePort"].as_u64().filter(|np| *np > 0);
        if !wants_node_ports {
            continue;
        }
        let np = match requested {
            Some(np) => {
                let np = np as u32;
                let kept = old_ports
                    .iter()
                    .any(|o| o["nodePort"].as_u64() == Some(np.into()));
                if !kept && (!alloc::NODE_PORT_RANGE.contains(&np) || used.node_ports.contains(&np))
                {
                    let why = if alloc::NODE_PORT_RANGE.contains(&np) {
                        "provided port is already allocated".to_string()
                    } else {
                        format!(
                            "provided port is not in the valid range. The range of valid ports is {}-{}",
                            alloc::NODE_PORT_RANGE.start(),
                            alloc::NODE_PORT_RANGE.end()
                        )
                    };
                    return Err(invalid(
                        &format!("spec.ports[{i}].nodePort"),
                        format!("Invalid value: {np}: {why}"),
                    ));
                }
                np
            }
            None => {
                // Keep the NodePort of the same port from before, if any.
                let same = old_ports.iter().find(|o| {
                    o["port"] == p["port"]
                        && o["protocol"] == p["protocol"]
                        && o["name"] == p["name"]
                });
                match same.and_then(|o| o["nodePort"].as_u64()).filter(|n| *n > 0) {
                    Some(n) if !claimed.contains(&(n as u32)) => n as u32,
                    _ => {
                        let mut taken = used.node_ports.clone();
                        taken.extend(claimed.iter().copied());
                        alloc::allocate_node_port(&taken).ok_or_else(|| {
                            invalid(
                                &format!("spec.ports[{i}].nodePort"),
                                "failed to allocate a nodePort: range is full".into(),
                            )
                        })?
                    }
                }
            }
        };
        claimed.insert(np);
        used.node_ports.insert(np);
        p["nodePort"] = json!(np);
    }
    if !ports.is_empty() {
        spec.insert("ports".into(), Value::Array(ports));
    }

    // A LoadBalancer with externalTrafficPolicy Local gets a health check node port, where
    // each node's proxy says whether it has local endpoints (kube-apiserver's
    // healthCheckNodePort); it is kept across updates and released with the need for it.
    let needs_hc = ty == "LoadBalancer"
        && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local");
    let old_hc = old_spec
        .and_then(|s| s["healthCheckNodePort"].as_u64())
        .filter(|p| *p > 0)
        .map(|p| p as u32);
    let requested_hc = spec
        .get("healthCheckNodePort")
        .and_then(Value::as_u64)
        .filter(|p| *p > 0)
        .map(|p| p as u32);
    const HC: &str = "spec.healthCheckNodePort";
    if needs_hc {
        let hc = match (requested_hc, old_hc) {
            (Some(r), Some(o)) if r == o => r,
            (Some(r), _) => {
                if !alloc::NODE_PORT_RANGE.contains(&r) {
                    return Err(invalid(
                        HC,
                        format!(
                            "Invalid value: {r}: provided port is not in the valid range. \
                             The range of valid ports is {}-{}",
                            alloc::NODE_PORT_RANGE.start(),
                            alloc::NODE_PORT_RANGE.end()
                        ),
                    ));
                }
                if used.node_ports.contains(&r) {
                    return Err(invalid(
                        HC,
                        format!("Invalid value: {r}: provided port is already allocated"),
                    ));
                }
                r
            }
            (None, Some(o)) if !used.node_ports.contains(&o) => o,
            (None, _) => alloc::allocate_node_port(&used.node_ports).ok_or_else(|| {
                invalid(HC, "failed to allocate a nodePort: range is full".into())
            })?,
        };
        spec.insert("healthCheckNodePort".into(), json!(hc));
    } else if let Some(r) = requested_hc {
        if Some(r) == old_hc {
            // Left over from before the type or policy changed: released.
            spec.remove("healthCheckNodePort");
        } else {
            return Err(invalid(
                HC,
                format!(
                    "Invalid value: {r}: may only be set when `type` is 'LoadBalancer' and \
                     `externalTrafficPolicy` is 'Local'"
                ),
            ));
        }
    }
    Ok(())
}
