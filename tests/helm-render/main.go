// helm-render renders a Helm chart's templates the way Helm's own engine does, for the chart
// tests (tests/tests/e2e/chart.rs) on machines without a Helm binary: Go's text/template with
// the sprig function library (minus env and expandenv, as Helm), Helm's own functions
// (include, tpl, required, toYaml, fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray,
// lookup), missing keys rendered empty,
// every file of templates/ parsed into one set (so a define in one is usable in another), and
// .Values, .Release, .Chart, .Capabilities and .Template as Helm gives them.
//
// Usage: helm-render CHART_DIR ROOT_JSON
// ROOT_JSON holds {"Values", "Release", "Chart", "KubeVersion", "Lookup"}; `lookup` finds what
// Lookup holds under "apiVersion/kind/namespace/name" (an object already in the cluster), else
// nothing, as `helm template` offline. Prints a JSON object: template
// file name (relative to templates/) -> rendered text. A parse or execution error exits 1 with
// Go's own message, naming the file and line as Helm would.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type kubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (k kubeVersion) String() string { return k.Version }

type versionSet []string

func (v versionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type capabilities struct {
	KubeVersion kubeVersion
	APIVersions versionSet
}

// yaml.v2 decodes maps with interface{} keys; templates and JSON need string keys.
func stringKeys(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, x := range t {
			m[fmt.Sprint(k)] = stringKeys(x)
		}
		return m
	case []interface{}:
		for i, x := range t {
			t[i] = stringKeys(x)
		}
		return t
	}
	return v
}

func funcs(t *template.Template, cluster map[string]interface{}) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		var v map[interface{}]interface{}
		if err := yaml.Unmarshal([]byte(s), &v); err != nil {
			return map[string]interface{}{"Error": err.Error()}
		}
		m, _ := stringKeys(v).(map[string]interface{})
		return m
	}
	f["fromYamlArray"] = func(s string) []interface{} {
		var v []interface{}
		if err := yaml.Unmarshal([]byte(s), &v); err != nil {
			return []interface{}{err.Error()}
		}
		a, _ := stringKeys(v).([]interface{})
		return a
	}
	f["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromJsonArray"] = func(s string) []interface{} {
		a := []interface{}{}
		if err := json.Unmarshal([]byte(s), &a); err != nil {
			return []interface{}{err.Error()}
		}
		return a
	}
	f["include"] = func(name string, data interface{}) (string, error) {
		var b strings.Builder
		err := t.ExecuteTemplate(&b, name, data)
		return b.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		p, err := c.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		err = p.Execute(&b, data)
		return strings.ReplaceAll(b.String(), "<no value>", ""), err
	}
	f["required"] = func(warn string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, errors.New(warn)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, errors.New(warn)
		}
		return v, nil
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) (map[string]interface{}, error) {
		if found, ok := cluster[apiVersion+"/"+kind+"/"+namespace+"/"+name].(map[string]interface{}); ok {
			return found, nil
		}
		return map[string]interface{}{}, nil
	}
	return f
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "helm-render: "+format+"\n", a...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: helm-render CHART_DIR ROOT_JSON")
	}
	chartDir, rootFile := os.Args[1], os.Args[2]
	raw, err := os.ReadFile(rootFile)
	if err != nil {
		fail("%v", err)
	}
	var in struct {
		Values      map[string]interface{}
		Release     map[string]interface{}
		Chart       map[string]interface{}
		KubeVersion string
		Lookup      map[string]interface{}
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		fail("%s: %v", rootFile, err)
	}
	chartName, _ := in.Chart["Name"].(string)
	kv := strings.TrimPrefix(in.KubeVersion, "v")
	parts := strings.SplitN(kv, ".", 3)
	if len(parts) < 2 {
		fail("KubeVersion %q is not MAJOR.MINOR.PATCH", in.KubeVersion)
	}
	caps := capabilities{
		KubeVersion: kubeVersion{Version: "v" + kv, Major: parts[0], Minor: parts[1]},
		APIVersions: versionSet{"v1", "apps/v1", "policy/v1", "admissionregistration.k8s.io/v1", "networking.k8s.io/v1"},
	}

	t := template.New("gotpl")
	t.Option("missingkey=zero")
	t.Funcs(funcs(t, in.Lookup))
	dir := filepath.Join(chartDir, "templates")
	var names []string
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		names = append(names, rel)
		return nil
	})
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(names)
	for _, rel := range names {
		text, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			fail("%v", err)
		}
		if _, err := t.New(chartName + "/templates/" + rel).Parse(string(text)); err != nil {
			fail("%v", err)
		}
	}
	out := map[string]string{}
	for _, rel := range names {
		if strings.HasPrefix(filepath.Base(rel), "_") {
			continue
		}
		name := chartName + "/templates/" + rel
		root := map[string]interface{}{
			"Values":       in.Values,
			"Release":      in.Release,
			"Chart":        in.Chart,
			"Capabilities": caps,
			"Template":     map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"},
		}
		var b strings.Builder
		if err := t.ExecuteTemplate(&b, name, root); err != nil {
			fail("%v", err)
		}
		out[rel] = strings.ReplaceAll(b.String(), "<no value>", "")
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		fail("%v", err)
	}
}
