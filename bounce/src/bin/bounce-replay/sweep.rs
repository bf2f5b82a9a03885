//! The configurations a run replays: the `--config`s, crossed with every `--vary` and
//! `--sweep` value.

use bounce::SwiotlbConfig;

/// One configuration to replay: its labels (the base `--config` if several, then one value per
/// varied key) and its `key=value,...` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub labels: Vec<String>,
    pub config: String,
}

/// A varied key and its values, from `--vary K=V1|V2` or one `;`-part of `--sweep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

/// Parses a `--sweep` spec: `key=v1,v2,...;key2=...` (a cross product of every key's values).
/// Every key and value is checked against the pool configuration (`SwiotlbConfig::set`), so a
/// bad spec is refused before anything runs.
pub fn parse_sweep(spec: &str) -> Result<Vec<Axis>, String> {
    let mut axes: Vec<Axis> = Vec::new();
    for part in spec.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, values) = part.split_once('=').ok_or_else(|| {
            format!("sweep part `{part}`: expected KEY=V1,V2,... (parts separated by `;`)")
        })?;
        let values: Vec<&str> = values.split(',').map(str::trim).collect();
        axes.push(axis(key, values.into_iter(), "sweep")?);
    }
    if axes.is_empty() {
        return Err(format!(
            "sweep `{spec}` is empty: expected KEY=V1,V2,...;KEY2=..."
        ));
    }
    no_duplicates(&axes)?;
    Ok(axes)
}

/// Parses a `--vary` spec: `key=v1|v2|...`.
pub fn parse_vary(spec: &str) -> Result<Axis, String> {
    let (key, values) = spec
        .split_once('=')
        .ok_or_else(|| format!("vary `{spec}`: expected KEY=V1|V2|..."))?;
    axis(key, values.split('|').map(str::trim), "vary")
}

fn axis<'v>(key: &str, values: impl Iterator<Item = &'v str>, what: &str) -> Result<Axis, String> {
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{what}: a key is missing before `=`"));
    }
    let mut out = Vec::new();
    for v in values {
        if v.is_empty() {
            return Err(format!("{what} key `{key}`: an empty value"));
        }
        // Checked alone on Linux's defaults: only the key and the value's syntax (a
        // combination that does not hold together fails when its cell is built).
        SwiotlbConfig::default()
            .set(key, v)
            .map_err(|e| format!("{what} `{key}={v}`: {e}"))?;
        if out.iter().any(|o| o == v) {
            return Err(format!("{what} key `{key}`: value `{v}` given twice"));
        }
        out.push(v.to_string());
    }
    Ok(Axis {
        key: key.to_string(),
        values: out,
    })
}

/// A key varied twice would make cells whose labels lie.
pub fn no_duplicates(axes: &[Axis]) -> Result<(), String> {
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(format!("key `{}` is varied twice", a.key));
        }
    }
    Ok(())
}

/// Every base configuration crossed with every value of each axis, the first axis outermost.
pub fn cells(configs: &[String], axes: &[Axis]) -> Vec<Cell> {
    let mut cells: Vec<Cell> = configs
        .iter()
        .map(|c| Cell {
            labels: vec![c.clone()],
            config: c.clone(),
        })
        .collect();
    for a in axes {
        cells = cells
            .into_iter()
            .flat_map(|c| {
                a.values.iter().map(move |v| {
                    let mut labels = c.labels.clone();
                    labels.push(v.clone());
                    let sep = if c.config.is_empty() { "" } else { "," };
                    Cell {
                        labels,
                        config: format!("{}{sep}{}={v}", c.config, a.key),
                    }
                })
            })
            .collect();
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_is_a_cross_product() {
        let axes = parse_sweep("size=1M,4M,16M; exhaustion=fail,transient").unwrap();
        assert_eq!(axes.len(), 2);
        let c = cells(&["convert=tdx".into()], &axes);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0].config, "convert=tdx,size=1M,exhaustion=fail");
        assert_eq!(c[5].config, "convert=tdx,size=16M,exhaustion=transient");
        assert_eq!(c[5].labels, ["convert=tdx", "16M", "transient"]);
        let c = cells(&[String::new()], &axes);
        assert_eq!(c[1].config, "size=1M,exhaustion=transient");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for (spec, want) in [
            ("", "is empty"),
            ("size", "expected KEY=V1,V2"),
            ("sizes=1M", "unknown swiotlb key `sizes`"),
            ("size=1Q", "size=1Q"),
            ("size=1M,,4M", "empty value"),
            ("size=1M,1M", "given twice"),
            ("size=1M;size=4M", "varied twice"),
            ("=1M", "key is missing"),
            ("exhaustion=fail,sometimes", "exhaustion=sometimes"),
        ] {
            let e = parse_sweep(spec).unwrap_err();
            assert!(e.contains(want), "{spec}: {e}");
        }
        assert!(parse_vary("size").is_err());
        assert_eq!(
            parse_vary("size=1M|4M").unwrap().values,
            ["1M".to_string(), "4M".to_string()]
        );
    }

    #[test]
    fn custom_convert_values_survive_the_split() {
        let a =
            parse_sweep("convert=none,custom:to-shared=1/1/1/0/0:to-private=1/1/1/0/0").unwrap();
        assert_eq!(a[0].values.len(), 2);
    }
}
