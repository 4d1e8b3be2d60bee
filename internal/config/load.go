package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads the dendrite.yaml at path and decodes it over Default, as Parse does.
// It returns an error wrapping the os error when the file cannot be read, and an
// *Errors listing every problem when it cannot be decoded. It neither applies the
// environment nor validates: call ApplyEnv and then Validate.
func Load(path string) (*Config, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(data)
}

// Parse decodes a dendrite.yaml document over Default: keys absent from it keep their
// defaults, a list given in it replaces the default list, and a key set to null keeps
// the default (null empties a list). Relative paths are kept as written; they are
// relative to the working directory, as in Dendrite.
//
// Decoding is strict. A key Myelin does not have but Dendrite does (or did) becomes a
// Warning naming its path; any other unknown key, a wrong type, a duplicate key or bad
// YAML is a Problem. When there is any problem Parse returns a nil *Config, the
// warnings found, and an *Errors listing every problem.
//
// Parse also warns when client_api.registration_disabled is unset, because Myelin's
// default (open) differs from Dendrite's (closed), and when per-component Dendrite
// databases are set but global.database.connection_string is not.
func Parse(data []byte) (*Config, []Warning, error) {
	c := Default()
	d := &decoder{
		schema: newDendriteSchema(),
		lines:  map[string]int{},
		set:    map[string]bool{},
		active: map[*yaml.Node]bool{},
	}
	d.document(data, reflect.ValueOf(c).Elem())
	if len(d.problems) > 0 {
		return nil, d.warnings, errorsOrNil(d.problems)
	}

	if !d.set["client_api.registration_disabled"] {
		d.warnings = append(d.warnings, Warning{
			Path:    "client_api.registration_disabled",
			Message: "not set, so registration is open: Myelin's default is false, Dendrite's is true",
		})
	}
	if d.componentDB && !d.set["global.database.connection_string"] {
		d.warnings = append(d.warnings, Warning{
			Path: "global.database.connection_string",
			Message: "not set, so every component uses " + c.Global.Database.ConnectionString +
				" (or MYELIN_DATABASE); the per-component Dendrite databases are not used",
		})
	}

	c.origin.lines = d.lines
	c.origin.derived = derived{
		database:   !d.set["global.database.connection_string"],
		privateKey: !d.set["global.private_key"],
		mediaPath:  !d.set["media_api.base_path"],
	}
	c.deriveFromDataDir()
	return c, d.warnings, nil
}

// decoder walks a yaml.Node tree against a Config, collecting every problem.
type decoder struct {
	schema   *dendriteSchema
	problems []Problem
	warnings []Warning
	// lines maps each YAML path seen to the line of its key.
	lines map[string]int
	// set holds the paths that were given a (non-null) value.
	set map[string]bool
	// componentDB is true once a Dendrite per-component database was seen.
	componentDB bool
	// active holds the mappings and lists being walked, to catch aliases that refer
	// to a node containing them.
	active map[*yaml.Node]bool
}

func (d *decoder) problem(path string, line int, format string, args ...any) {
	d.problems = append(d.problems, Problem{Path: path, Line: line, Message: fmt.Sprintf(format, args...)})
}

// document decodes the single YAML document in data into v.
func (d *decoder) document(data []byte, v reflect.Value) {
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return // an empty file: all defaults
		}
		d.problem("", 0, "invalid YAML: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		return
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		d.problem("", extra.Line, "the file holds more than one YAML document")
	}
	if len(doc.Content) == 0 {
		return
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		d.problem("", root.Line, "want a mapping of sections (version, global, …), got %s", describeNode(root))
		return
	}
	d.value(root, v, "")
}

// value decodes n into v, which is addressable.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	n = resolve(n)
	if isNull(n) {
		switch v.Kind() {
		case reflect.Slice, reflect.Map, reflect.Pointer, reflect.Interface:
			v.SetZero()
			d.set[path] = true
		}
		return // null leaves other values at their defaults, as yaml.v3 does
	}
	switch {
	case isDuration(v.Type()):
		d.leaf(n, v, path)
	case v.Kind() == reflect.Struct:
		d.mapping(n, v, path)
	case v.Kind() == reflect.Slice:
		d.sequence(n, v, path)
	case v.Kind() == reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		d.value(n, p.Elem(), path)
		v.Set(p)
	default:
		d.leaf(n, v, path)
	}
}

// leaf decodes a value Myelin does not look inside: scalars, durations, and maps such
// as logging params.
func (d *decoder) leaf(n *yaml.Node, v reflect.Value, path string) {
	p := reflect.New(v.Type())
	if err := n.Decode(p.Interface()); err != nil {
		d.problem(path, n.Line, "want %s, got %s", describeType(v.Type()), describeNode(n))
		return
	}
	v.Set(p.Elem())
	d.set[path] = true
}

// sequence decodes a YAML list into the slice v, replacing what v held.
func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		d.problem(path, n.Line, "want %s, got %s", describeType(v.Type()), describeNode(n))
		return
	}
	if !d.enter(n, path) {
		return
	}
	defer delete(d.active, n)
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, e := range n.Content {
		p := path + "[" + strconv.Itoa(i) + "]"
		d.lines[p] = e.Line
		d.value(e, s.Index(i), p)
	}
	v.Set(s)
	d.set[path] = true
}

// mapping decodes a YAML mapping into the struct v, field by yaml tag, leaving
// fields the mapping does not mention as they were.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.problem(path, n.Line, "want %s, got %s", describeType(v.Type()), describeNode(n))
		return
	}
	fields := yamlFields(v.Type())
	d.pairs(n, path, func(k, val *yaml.Node, p string) {
		if i, ok := fields[k.Value]; ok {
			d.value(val, v.Field(i), p)
			return
		}
		d.unknown(k, val, path, p, fieldNames(fields))
	})
}

// pairs calls f for each key of the mapping n with the key's path, after the keys
// merged in with "<<" (which explicit keys then override). It reports keys that are not
// strings and keys given twice.
func (d *decoder) pairs(n *yaml.Node, path string, f func(k, v *yaml.Node, p string)) {
	if !d.enter(n, path) {
		return
	}
	defer delete(d.active, n)
	var explicit [][2]*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			for _, m := range mergeSources(val) {
				if m.Kind != yaml.MappingNode {
					d.problem(join(path, "<<"), k.Line, "want a mapping to merge, got %s", describeNode(m))
					continue
				}
				d.pairs(m, path, f)
			}
			continue
		}
		explicit = append(explicit, [2]*yaml.Node{k, val})
	}
	seen := map[string]int{}
	for _, kv := range explicit {
		k, val := kv[0], kv[1]
		if k.Kind != yaml.ScalarNode {
			d.problem(path, k.Line, "want a key name, got %s", describeNode(k))
			continue
		}
		p := join(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.problem(p, k.Line, "key given twice (first on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		d.lines[p] = k.Line
		f(k, val, p)
	}
}

// enter marks n as being walked. It reports false, and a problem, when n is already
// being walked: an alias inside n refers to n.
func (d *decoder) enter(n *yaml.Node, path string) bool {
	if d.active[n] {
		d.problem(path, n.Line, "an alias refers to a node that contains it")
		return false
	}
	d.active[n] = true
	return true
}

// unknown handles key k (at path p, below parent) that the Config does not have.
func (d *decoder) unknown(k, val *yaml.Node, parent, p string, known []string) {
	np := normalise(p)
	if _, ok := d.schema.keys[np]; ok {
		d.dendrite(k, val, p, np)
		return
	}
	candidates := append(known, d.schema.children[normalise(parent)]...)
	d.problem(p, k.Line, "unknown key%s", hint(k.Value, candidates))
}

// dendrite handles a key of Dendrite's schema that Myelin does not have: a warning for
// it, or for each key below it when it is a section, and a problem for keys below it
// that Dendrite does not have either.
func (d *decoder) dendrite(k, val *yaml.Node, p, np string) {
	key := d.schema.keys[np]
	val = resolve(val)
	children := d.schema.children[np]
	if key.opaque || len(children) == 0 || val.Kind != yaml.MappingNode {
		d.warnings = append(d.warnings, Warning{Path: p, Line: k.Line, Message: key.message})
		if key.message == notUsedDB {
			d.componentDB = true
		}
		return
	}
	d.pairs(val, p, func(ck, cv *yaml.Node, cp string) {
		ncp := np + "." + ck.Value
		if _, ok := d.schema.keys[ncp]; ok {
			d.dendrite(ck, cv, cp, ncp)
			return
		}
		d.problem(cp, ck.Line, "unknown key%s", hint(ck.Value, children))
	})
}

// yamlFields maps the yaml names of t's exported fields to their indexes.
func yamlFields(t reflect.Type) map[string]int {
	fields := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(f.Name)
		}
		fields[name] = i
	}
	return fields
}

func fieldNames(fields map[string]int) []string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	return names
}

// resolve follows aliases (*anchor) to the node they name.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// mergeSources lists the mappings a "<<" key merges: one mapping or a list of them.
func mergeSources(n *yaml.Node) []*yaml.Node {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		return []*yaml.Node{n}
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, m := range n.Content {
		out[i] = resolve(m)
	}
	return out
}

func isDuration(t reflect.Type) bool {
	return t == reflect.TypeFor[time.Duration]()
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// describeType says in words what a value of type t looks like in YAML.
func describeType(t reflect.Type) string {
	if isDuration(t) {
		return `a duration such as "168h" or "30s"`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	default:
		return "a value"
	}
}

// describeNode says in words what the YAML node n is, quoting short scalars.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		kind := map[string]string{
			"!!str": "string", "!!int": "integer", "!!float": "number",
			"!!bool": "boolean", "!!null": "null", "!!timestamp": "timestamp",
		}[n.ShortTag()]
		if kind == "" {
			kind = "value"
		}
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "…"
		}
		return kind + " " + strconv.Quote(v)
	default:
		return "an unsupported YAML node"
	}
}
