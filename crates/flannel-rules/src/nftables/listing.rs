//! Reading `nft list table` and working out the smallest `nft -f -` transaction that turns it into
//! the desired state.

use crate::config::{Family, Part};

use super::rules::{
    ChainDef, FORWARD_CHAIN, POSTRTG_CHAIN, add_chain_with_rules, add_table, chain_name,
    table_comment, table_ref,
};

/// A chain as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListedChain {
    pub(crate) name: String,
    /// The unquoted comment, if any.
    pub(crate) comment: Option<String>,
    /// The `type ... hook ... priority ...; policy ...;` line of a base chain.
    pub(crate) hook: Option<String>,
    /// The rules, whitespace-normalised.
    pub(crate) rules: Vec<String>,
}

/// A table as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ListedTable {
    /// The unquoted table comment, if any.
    pub(crate) comment: Option<String>,
    /// The chains, in listing order.
    pub(crate) chains: Vec<ListedChain>,
    /// Sets, maps, flowtables and other objects flannel never creates (left alone).
    pub(crate) other_objects: usize,
}

impl ListedTable {
    fn chain(&self, name: &str) -> Option<&ListedChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `{` minus `}` outside double-quoted strings.
fn brace_balance(line: &str) -> i32 {
    let mut quoted = false;
    let mut depth = 0;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => depth -= 1,
            _ => {}
        }
    }
    depth
}

fn unquote_comment(line: &str) -> Option<String> {
    let rest = line.strip_prefix("comment ")?.trim();
    Some(rest.trim_matches('"').to_string())
}

/// Parses the output of `nft list table <family> <name>`.
pub(crate) fn parse_table(text: &str) -> Result<ListedTable, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some(first) if first.starts_with("table ") && first.ends_with('{') => {}
        other => return Err(format!("expected `table ... {{`, found {other:?}")),
    }
    let mut table = ListedTable::default();
    let mut closed = false;
    while let Some(line) = lines.next() {
        if closed {
            return Err(format!("unexpected text after the table: {line:?}"));
        }
        if line == "}" {
            closed = true;
        } else if let Some(comment) = unquote_comment(line) {
            table.comment = Some(comment);
        } else if let Some(rest) = line.strip_prefix("chain ") {
            let name = rest
                .strip_suffix('{')
                .ok_or_else(|| format!("expected `chain NAME {{`, found {line:?}"))?
                .trim();
            let mut chain = ListedChain {
                name: name.to_string(),
                ..ListedChain::default()
            };
            let mut chain_closed = false;
            while let Some(line) = lines.next() {
                if line == "}" {
                    chain_closed = true;
                    break;
                }
                // A rule whose braces are not balanced continues on the next lines (a long
                // anonymous set); keep it as one (foreign) rule.
                let mut joined = line.to_string();
                let mut depth = brace_balance(line);
                while depth > 0 {
                    let Some(next) = lines.next() else {
                        return Err(format!("chain {name} ends inside a block"));
                    };
                    joined.push(' ');
                    joined.push_str(next);
                    depth += brace_balance(next);
                }
                let line = joined.as_str();
                let header = chain.rules.is_empty() && chain.hook.is_none();
                if header
                    && chain.comment.is_none()
                    && let Some(comment) = unquote_comment(line)
                {
                    chain.comment = Some(comment);
                    continue;
                }
                if chain.rules.is_empty() && chain.hook.is_none() && line.starts_with("type ") {
                    chain.hook = Some(normalize(line));
                    continue;
                }
                chain.rules.push(normalize(line));
            }
            if !chain_closed {
                return Err(format!("chain {name} is not closed"));
            }
            table.chains.push(chain);
        } else if brace_balance(line) > 0 {
            // A set, map, flowtable, ...: skip its body.
            table.other_objects += 1;
            let mut depth = brace_balance(line);
            for line in lines.by_ref() {
                depth += brace_balance(line);
                if depth <= 0 {
                    break;
                }
            }
            if depth > 0 {
                return Err("an object in the table is not closed".to_string());
            }
        } else {
            // Table flags and the like: anything we do not write makes the table "foreign".
            table.other_objects += 1;
        }
    }
    if !closed {
        return Err("the table is not closed".to_string());
    }
    Ok(table)
}

/// What the table of one family should look like after this step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TableDesired<'a> {
    /// The table exists (if any chain is wanted); for each listed part, its chain is exactly the
    /// given definition (`Some`) or absent (`None`). Parts not listed are left as they are.
    Parts(Vec<(Part, Option<&'a ChainDef>)>),
    /// flannel wants nothing in this family: the whole table goes.
    Absent,
}

/// The current state of a family's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TableCurrent {
    /// `nft list table` said it does not exist.
    Missing,
    /// It exists and was understood.
    Listed(ListedTable),
    /// It exists but the listing could not be understood; it is rewritten from scratch.
    Unparsable(String),
}

fn is_known_chain(name: &str) -> bool {
    name == POSTRTG_CHAIN || name == FORWARD_CHAIN
}

fn chain_matches(listed: &ListedChain, want: &ChainDef) -> bool {
    listed.comment.as_deref() == Some(want.comment)
        && listed.hook.as_deref() == Some(normalize(want.hook).as_str())
        && listed.rules.len() == want.rules.len()
        && listed
            .rules
            .iter()
            .zip(&want.rules)
            .all(|(l, w)| *l == normalize(w))
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
    family: Family,
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
    let wanted: Vec<&ChainDef> = parts.iter().filter_map(|(_, def)| *def).collect();
    let listed = match current {
        TableCurrent::Missing => {
            if wanted.is_empty() {
                return Vec::new();
            }
            let mut lines = vec![add_table(family)];
            for def in &wanted {
                lines.extend(add_def(family, def));
            }
            return lines;
        }
        TableCurrent::Unparsable(_) => return rewrite(family, None, parts),
        TableCurrent::Listed(listed) => listed,
    };
    if listed.comment.as_deref() != Some(table_comment(family).as_str()) {
        return rewrite(family, Some(listed), parts);
    }

    let mut body = Vec::new();
    for (part, def) in parts {
        let name = chain_name(*part);
        match (def, listed.chain(name)) {
            (Some(def), None) => body.extend(add_def(family, def)),
            (Some(def), Some(have))
                if have.comment.as_deref() != Some(def.comment)
                    || have.hook.as_deref() != Some(normalize(def.hook).as_str()) =>
            {
                body.push(format!("flush chain {table} {name}"));
                body.push(format!("delete chain {table} {name}"));
                body.extend(add_def(family, def));
            }
            (Some(def), Some(have)) if !chain_matches(have, def) => {
                body.extend(add_def(family, def))
            }
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) => {
                body.push(format!("flush chain {table} {name}"));
                body.push(format!("delete chain {table} {name}"));
            }
        }
    }
    let unknown: Vec<&ListedChain> = listed
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

fn add_def(family: Family, def: &ChainDef) -> Vec<String> {
    add_chain_with_rules(
        family,
        def.name,
        Some(def.comment),
        Some(def.hook),
        &def.rules,
        true,
    )
}

/// Deletes and re-creates the table in one transaction.
fn rewrite(
    family: Family,
    listed: Option<&ListedTable>,
    parts: &[(Part, Option<&ChainDef>)],
) -> Vec<String> {
    let table = table_ref(family);
    let mut lines = vec![
        format!("add table {table}"),
        format!("delete table {table}"),
        add_table(family),
    ];
    for (_, def) in parts {
        if let Some(def) = def {
            lines.extend(add_def(family, def));
        }
    }
    if let Some(listed) = listed {
        let reconciled: Vec<&str> = parts.iter().map(|(p, _)| chain_name(*p)).collect();
        for chain in listed
            .chains
            .iter()
            .filter(|c| is_known_chain(&c.name) && !reconciled.contains(&c.name.as_str()))
        {
            lines.extend(add_chain_with_rules(
                family,
                &chain.name,
                chain.comment.as_deref(),
                chain.hook.as_deref(),
                &chain.rules,
                false,
            ));
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

/// Parses `nft list tables` into `(family, name)` pairs.
pub(crate) fn parse_tables(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("table"), Some(family), Some(name)) => {
                    Some((family.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}
