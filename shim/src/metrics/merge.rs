//! Merges the pages of many pods into one: the text format wants each family's samples
//! together under one `# HELP`/`# TYPE` header, and every pod's page has the same
//! families (told apart by their `pod` label).
use std::collections::HashMap;

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// The families seen so far, and the order they came in.
#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: HashMap<String, Family>,
}

impl Families {
    fn get(&mut self, name: &str) -> &mut Family {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.by_name.entry(name.to_string()).or_default()
    }
}

/// One page with each family once, in the order families first appear; comments other
/// than HELP and TYPE are dropped.
pub fn merge<'a>(pages: impl IntoIterator<Item = &'a str>) -> String {
    let mut families = Families::default();
    for page in pages {
        // Samples belong to the family whose header came last, as long as their names
        // start with its name (a histogram's `_bucket`, `_sum`, `_count`).
        let mut current: Option<String> = None;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let (Some(word), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                let slot = match word {
                    "HELP" => &mut families.get(name).help,
                    "TYPE" => &mut families.get(name).kind,
                    _ => continue,
                };
                slot.get_or_insert_with(|| line.to_string());
                current = Some(name.to_string());
                continue;
            }
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let sample_name = line.split(['{', ' ']).next().unwrap_or(line);
            let owner = match &current {
                Some(c) if sample_name.starts_with(c.as_str()) => c.clone(),
                _ => sample_name.to_string(),
            };
            families.get(&owner).samples.push(line.to_string());
        }
    }
    let mut out = String::new();
    for name in &families.order {
        let f = &families.by_name[name];
        for line in f.help.iter().chain(&f.kind).chain(&f.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_once_with_every_pods_samples() {
        let a = "# HELP up Up.\n# TYPE up gauge\nup{pod=\"a\"} 1\n# HELP t_total T.\n# TYPE t_total counter\nt_total{pod=\"a\"} 5\n";
        let b = "# HELP up Up.\n# TYPE up gauge\nup{pod=\"b\"} 0\n# a comment\n\n# HELP t_total T.\n# TYPE t_total counter\nt_total{pod=\"b\"} 7\n";
        let c = "h_bucket{le=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_sum 4\nh_count 3\n";
        assert_eq!(
            merge([a, b, c]),
            "# HELP up Up.\n# TYPE up gauge\nup{pod=\"a\"} 1\nup{pod=\"b\"} 0\n\
             # HELP t_total T.\n# TYPE t_total counter\nt_total{pod=\"a\"} 5\nt_total{pod=\"b\"} 7\n\
             h_bucket{le=\"1\"} 2\n\
             # TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_sum 4\nh_count 3\n"
        );
        assert_eq!(merge([]), "");
    }
}
