//! The stage graph: topological order, cycle detection, and target selection.

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Result};

/// Stages that depend on each other in a circle, named in order (the first repeats last).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", .0.join(" -> "))]
pub struct Cycle(pub Vec<String>);

pub struct Dag {
    /// Stage names in a topological order that keeps file order where it can.
    pub order: Vec<String>,
    /// Direct upstream stages of each stage.
    pub upstream: HashMap<String, BTreeSet<String>>,
}

impl Dag {
    /// Builds the graph from each stage's name and the stages it reads, in file order.
    /// Every upstream name must be one of the stages.
    pub fn new(stages: Vec<(String, BTreeSet<String>)>) -> Result<Self, Cycle> {
        let names: Vec<String> = stages.iter().map(|(name, _)| name.clone()).collect();
        let upstream: HashMap<String, BTreeSet<String>> = stages.into_iter().collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let order = topological_order(&names, &upstream)?;
        Ok(Self { order, upstream })
    }

    /// The named stages and everything they depend on, in run order. No targets means all.
    pub fn select(&self, targets: &[String]) -> Result<Vec<String>> {
        if targets.is_empty() {
            return Ok(self.order.clone());
        }
        let mut wanted = BTreeSet::new();
        let mut stack: Vec<String> = Vec::new();
        for target in targets {
            if !self.upstream.contains_key(target) {
                bail!("no stage named `{target}` (stages: {})", self.order.join(", "));
            }
            stack.push(target.clone());
        }
        while let Some(name) = stack.pop() {
            if wanted.insert(name.clone()) {
                stack.extend(self.upstream[&name].iter().cloned());
            }
        }
        Ok(self.order.iter().filter(|name| wanted.contains(*name)).cloned().collect())
    }

    /// Graphviz text of the graph.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for name in &self.order {
            out.push_str(&format!("  \"{name}\";\n"));
            for up in &self.upstream[name] {
                out.push_str(&format!("  \"{up}\" -> \"{name}\";\n"));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Kahn's algorithm, taking ready stages in file order; leftover stages form a cycle.
fn topological_order(
    names: &[&str],
    upstream: &HashMap<String, BTreeSet<String>>,
) -> Result<Vec<String>, Cycle> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(names.len());
    while order.len() < names.len() {
        let ready = names.iter().find(|name| {
            !done.contains(**name) && upstream[**name].iter().all(|up| done.contains(up.as_str()))
        });
        match ready {
            Some(name) => {
                done.insert(name);
                order.push(name.to_string());
            }
            None => {
                let stuck: Vec<&str> = names.iter().copied().filter(|name| !done.contains(name)).collect();
                let cycle = find_cycle(&stuck, upstream)
                    .unwrap_or_else(|| stuck.iter().map(|s| s.to_string()).collect());
                return Err(Cycle(cycle));
            }
        }
    }
    Ok(order)
}

/// Follows upstream edges from a stuck stage until a stage repeats.
fn find_cycle(stuck: &[&str], upstream: &HashMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut path: Vec<String> = vec![stuck.first()?.to_string()];
    loop {
        let current = path.last()?;
        let next = upstream[current].iter().find(|up| stuck.contains(&up.as_str()))?.clone();
        if let Some(start) = path.iter().position(|name| *name == next) {
            let mut cycle: Vec<String> = path[start..].iter().rev().cloned().collect();
            cycle.push(cycle[0].clone());
            return Some(cycle);
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(edges: &[(&str, &[&str])]) -> Result<Dag, Cycle> {
        Dag::new(
            edges
                .iter()
                .map(|(name, ups)| (name.to_string(), ups.iter().map(|u| u.to_string()).collect()))
                .collect(),
        )
    }

    #[test]
    fn order_keeps_file_order_where_it_can_and_select_takes_ancestors() {
        let dag = dag(&[("c", &["b"]), ("a", &[]), ("b", &["a"]), ("d", &[])]).unwrap();
        assert_eq!(dag.order, ["a", "b", "c", "d"]);
        assert_eq!(dag.select(&["c".into()]).unwrap(), ["a", "b", "c"]);
        assert_eq!(dag.select(&[]).unwrap(), dag.order);
        assert!(dag.select(&["nope".into()]).is_err());
    }

    #[test]
    fn cycles_are_named() {
        let err = dag(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]).err().unwrap();
        assert_eq!(err.to_string(), "dependency cycle: b -> c -> a -> b");
    }
}
