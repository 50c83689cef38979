package sqlmigrate

import (
	"testing"
	"testing/fstest"
)

func TestLoad(t *testing.T) {
	ms, err := Load(fstest.MapFS{
		"0002_audit.sql":   {Data: []byte("CREATE TABLE b (x int);")},
		"0001_records.sql": {Data: []byte("CREATE TABLE a (x int);")},
		"README.md":        {Data: []byte("not a migration")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Version != 1 || ms[0].Name != "records" || ms[1].File() != "0002_audit.sql" || ms[1].SQL != "CREATE TABLE b (x int);" {
		t.Errorf("Load = %+v", ms)
	}
}

func TestLoadRefuses(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"bad name":     {"2_x.sql": {Data: []byte("SELECT 1;")}},
		"upper case":   {"0001_Records.sql": {Data: []byte("SELECT 1;")}},
		"version zero": {"0000_x.sql": {Data: []byte("SELECT 1;")}},
		"duplicate":    {"0001_a.sql": {Data: []byte("SELECT 1;")}, "0001_b.sql": {Data: []byte("SELECT 1;")}},
	} {
		if _, err := Load(fsys); err == nil {
			t.Errorf("%s: Load accepted it", name)
		}
	}
}
