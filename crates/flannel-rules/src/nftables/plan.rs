//! The smallest `nft -f -` transaction that turns a family's table, as listed, into the desired
//! state.

use flannel_types::IpFamily;

use super::model::{Chain, Table};
use super::rules::{
    FORWARD_CHAIN, POSTRTG_CHAIN, add_chain, add_table, chain_name, table_comment, table_ref,
};
use crate::config::Part;

/// What the table of one family should look like after this step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TableDesired<'a> {
    /// The table exists (if any chain is wanted); for each listed part, its chain is exactly the
    /// given definition (`Some`) or absent (`None`). Parts not listed are left as they are.
    Parts(Vec<(Part, Option<&'a Chain>)>),
    /// flannel wants nothing in this family: the whole table goes.
    Absent,
}

/// The current state of a family's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TableCurrent {
    /// `nft list table` said it does not exist.
    Missing,
    /// It exists and was understood.
    Listed(Table),
    /// It exists but the listing could not be understood; it is rewritten from scratch.
    Unparsable,
}

fn is_known_chain(name: &str) -> bool {
    name == POSTRTG_CHAIN || name == FORWARD_CHAIN
}

/// The `nft -f -` script that takes `current` to `desired`; empty when nothing differs.
///
/// The usual repair is upstream's transaction shape: `add table`, `add chain`, `flush chain`, `add
/// rule`s, only for chains that differ. A chain whose comment or hook differs is flushed, deleted
/// and re-added; chains flannel does not know in its own table are removed. A table with the wrong
/// comment or an unparsable listing is deleted and re-created in the same transaction (the kernel
/// cannot change a table comment in place), keeping the listed chains of parts not being
/// reconciled.
pub(crate) fn plan(
    family: IpFamily,
    current: &TableCurrent,
    desired: &TableDesired<'_>,
) -> Vec<String> {
    let table = table_ref(family);
    let parts = match desired {
        TableDesired::Absent => {
            return match current {
                TableCurrent::Missing => Vec::new(),
                _ => vec![format!("delete table {table}")],
            };
        }
        TableDesired::Parts(parts) => parts,
    };
    let listed = match current {
        TableCurrent::Missing => {
            let wanted: Vec<&Chain> = parts.iter().filter_map(|(_, def)| *def).collect();
            if wanted.is_empty() {
                return Vec::new();
            }
            let mut lines = vec![add_table(family)];
            for def in wanted {
                lines.extend(add_chain(family, def, true));
            }
            return lines;
        }
        TableCurrent::Unparsable => return rewrite(family, None, parts),
        TableCurrent::Listed(listed) => listed,
    };
    if listed.comment.as_deref() != Some(table_comment(family).as_str()) {
        return rewrite(family, Some(listed), parts);
    }

    let mut body = Vec::new();
    for (part, def) in parts {
        let name = chain_name(*part);
        match (def, listed.chain(name)) {
            (Some(def), None) => body.extend(add_chain(family, def, true)),
            (Some(def), Some(have)) if have.comment != def.comment || have.hook != def.hook => {
                body.push(format!("flush chain {table} {name}"));
                body.push(format!("delete chain {table} {name}"));
                body.extend(add_chain(family, def, true));
            }
            (Some(def), Some(have)) if have != *def => body.extend(add_chain(family, def, true)),
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) => {
                body.push(format!("flush chain {table} {name}"));
                body.push(format!("delete chain {table} {name}"));
            }
        }
    }
    let unknown: Vec<&Chain> = listed
        .chains
        .iter()
        .filter(|c| !is_known_chain(&c.name))
        .collect();
    for chain in &unknown {
        body.push(format!("flush chain {table} {}", chain.name));
    }
    for chain in &unknown {
        body.push(format!("delete chain {table} {}", chain.name));
    }
    if body.is_empty() {
        return body;
    }
    let mut lines = vec![add_table(family)];
    lines.extend(body);
    lines
}

/// Deletes and re-creates the table in one transaction.
fn rewrite(
    family: IpFamily,
    listed: Option<&Table>,
    parts: &[(Part, Option<&Chain>)],
) -> Vec<String> {
    let table = table_ref(family);
    let mut lines = vec![
        format!("add table {table}"),
        format!("delete table {table}"),
        add_table(family),
    ];
    for def in parts.iter().filter_map(|(_, def)| *def) {
        lines.extend(add_chain(family, def, true));
    }
    if let Some(listed) = listed {
        let reconciled: Vec<&str> = parts.iter().map(|(p, _)| chain_name(*p)).collect();
        for chain in listed
            .chains
            .iter()
            .filter(|c| is_known_chain(&c.name) && !reconciled.contains(&c.name.as_str()))
        {
            lines.extend(add_chain(family, chain, false));
        }
    }
    lines
}

/// A whole script from its lines.
pub(crate) fn script(lines: &[String]) -> String {
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}
