
import numpy as np
import pytest

from metaedit import datasets
from metaedit.datasets import DatasetError

SHIPPED = sorted(n for n in datasets.LOADERS if n != "csv")

EXPECTED = {  # name: (n_train, n_test, input_shape, classes, groups)
    "adult": (30162, 15060, (104,), 2, 14),
    "german": (700, 300, (61,), 2, 20),
    "breast_cancer": (398, 171, (30,), 2, 30),
    "digits": (1257, 540, (8, 8, 1), 10, 0),
    "mnist5k": (4000, 1000, (28, 28, 1), 10, 0),
    "mnist1d": (4000, 1000, (40, 1), 10, 0),
}


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return datasets.load_dataset(request.param)


def test_shipped_shapes_and_groups(shipped):
    n_train, n_test, shape, classes, groups = EXPECTED[shipped.name]
    assert shipped.x_train.shape == (n_train,) + shape
    assert shipped.x_test.shape == (n_test,) + shape
    assert shipped.x_train.dtype == np.float32 and np.isfinite(shipped.x_train).all()
    assert shipped.y_train.dtype == np.int32 and shipped.y_train.shape == (n_train,)
    assert set(np.unique(shipped.y_train)) == set(range(classes)) == set(np.unique(shipped.y_test))
    assert shipped.num_classes == classes
    assert len(shipped.feature_groups) == len(shipped.group_names) == groups
    if groups:  # the groups partition the encoded columns, in order
        flat = [c for group in shipped.feature_groups for c in group]
        assert flat == list(range(shape[0])) == list(range(len(shipped.feature_names)))
    if shipped.s_train is not None:
        assert set(np.unique(shipped.s_train)) == {0, 1} and shipped.s_test.shape == (n_test,)
    assert datasets.load_source(shipped.source).x_train.shape == shipped.x_train.shape


def test_adult_encoding(adult):
    groups = dict(zip(adult.group_names, adult.feature_groups))
    assert len(groups["sex"]) == 2 and len(groups["age"]) == 1 and len(groups["native-country"]) == 41
    # one-hot groups hold exactly one 1 per row in train (every category is seen in train)
    for name in ("workclass", "education", "sex", "race"):
        block = adult.x_train[:, list(groups[name])]
        assert set(np.unique(block)) == {0.0, 1.0} and (block.sum(1) == 1).all()
    # numeric columns are standardised with train statistics
    age = adult.x_train[:, groups["age"][0]]
    assert abs(age.mean()) < 1e-4 and abs(age.std() - 1) < 1e-3
    # sensitive attribute is sex, 1 = Male, and agrees with the one-hot column
    male_column = adult.feature_names.index("sex=Male")
    np.testing.assert_array_equal(adult.x_train[:, male_column], adult.s_train)
    assert 0.2 < adult.y_test.mean() < 0.3  # the known base rate of >50K


def test_adult_race_and_german_age():
    race = datasets.load_adult(sensitive="race=White")
    assert 0.8 < race.s_train.mean() < 0.9
    german = datasets.load_german(sensitive="age")
    assert 0.7 < german.s_train.mean() < 0.9
    with pytest.raises(DatasetError, match="sensitive must be"):
        datasets.load_adult(sensitive="age")


def test_splits_are_deterministic_and_seeded():
    a, b = datasets.load_german(seed=3), datasets.load_german(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = datasets.load_german(seed=4)
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.x_train, c.x_train)


def test_unknown_dataset_is_named():
    with pytest.raises(DatasetError, match="unknown data set 'adullt'"):
        datasets.load_dataset("adullt")
    with pytest.raises(DatasetError, match="unexpected keyword"):
        datasets.load_dataset("digits", sensitive="sex")


def _write_csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def people_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["age,city,income,group,approved"]
    for i in range(60):
        rows.append(f"{20 + i % 40},{['a', 'b', 'c'][i % 3]},{rng.normal():.3f},{'xy'[i % 2]},{'yes' if i % 4 else 'no'}")
    return _write_csv(tmp_path / "people.csv", "\n".join(rows) + "\n")


def test_load_csv(people_csv):
    data = datasets.load_csv(people_csv, label="approved", sensitive="group", categorical=["city", "group"])
    assert data.group_names == ("age", "city", "income", "group")
    assert [len(g) for g in data.feature_groups] == [1, 3, 1, 2]
    assert data.x_train.shape == (42, 7) and data.x_test.shape == (18, 7)
    assert set(np.unique(data.y_train)) == {0, 1} and data.y_train.mean() > 0.5  # "yes" is class 1
    assert set(np.unique(data.s_train)) == {0, 1}
    positive_no = datasets.load_csv(people_csv, label="approved", categorical=["city", "group"], positive="no")
    assert positive_no.y_train.mean() < 0.5


def test_load_csv_errors(people_csv, tmp_path):
    with pytest.raises(DatasetError, match="unknown label column 'aproved'.*columns are: age, city"):
        datasets.load_csv(people_csv, label="aproved", categorical=["city", "group"])
    with pytest.raises(DatasetError, match="unknown categorical column 'town'"):
        datasets.load_csv(people_csv, label="approved", categorical=["town"])
    with pytest.raises(DatasetError, match="column 'city' .* is not numeric"):
        datasets.load_csv(people_csv, label="approved", categorical=["group"])
    with pytest.raises(DatasetError, match="label column 'age' must be binary but holds 40 values"):
        datasets.load_csv(people_csv, label="age", categorical=["city", "group", "approved"])
    with pytest.raises(DatasetError, match="is empty"):
        datasets.load_csv(_write_csv(tmp_path / "empty.csv", ""), label="y")
    with pytest.raises(DatasetError, match="no rows"):
        datasets.load_csv(_write_csv(tmp_path / "header.csv", "a,y\n"), label="y")
    with pytest.raises(DatasetError, match="not found"):
        datasets.load_csv(tmp_path / "missing.csv", label="y")


def test_damaged_shipped_file_is_refused(monkeypatch):
    monkeypatch.setitem(datasets.base.SHA256, "german.data.gz", "0" * 64)
    with pytest.raises(DatasetError, match="damaged"):
        datasets.load_german()


def test_sensitive_attributes_multi_valued_and_one_against_the_rest(tmp_path):
    adult = datasets.load_adult("race")
    assert adult.sensitive_groups == ("Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White")
    assert adult.num_groups == 5 and set(np.unique(adult.s_train)) == set(range(5))
    black = datasets.load_adult("race=Black")
    assert black.num_groups == 2 and (black.s_train == (adult.s_train == 2)).all()
    path = tmp_path / "mine.csv"
    path.write_text("x,city,label\n" + "\n".join(f"{i % 5},{'abc'[i % 3]},{i % 2}" for i in range(90)))
    three = datasets.load_csv(path, label="label", sensitive="city", categorical=["city"])
    assert three.sensitive_groups == ("a", "b", "c") and three.num_groups == 3
    one = datasets.load_csv(path, label="label", sensitive="city=b", categorical=["city"])
    assert one.sensitive_groups == ("city!=b", "city=b") and set(np.unique(one.s_test)) <= {0, 1}
    with pytest.raises(DatasetError, match="'z' is not a value of 'city'"):
        datasets.load_csv(path, label="label", sensitive="city=z", categorical=["city"])
    with pytest.raises(DatasetError, match="sensitive must be sex or race"):
        datasets.load_adult("age")
